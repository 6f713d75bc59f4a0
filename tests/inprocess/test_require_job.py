"""Quantum time outside Slurm (issue 22 item 3): a pool or class with require_slurm_job refuses sessions
without a verified Slurm job (admins exempt), and a session without a job is charged to its person's Slurm
account, so the account's quota binds it. The hooks stand in for Slurm here (the daemon's side of the
contract); tests/integration/slurm checks them against a real slurmdbd."""
from __future__ import annotations

import asyncio

from inprocess_harness import daemon

from qsched.errors import Forbidden
from qsched.integration import SlurmIntegration

NULL = [{"name": "null0", "type": "null", "pool": "null"}, {"name": "aer0", "type": "null", "pool": "aer"}]
NOT_ADMIN = {"admin_uids": [12345]}       # the test runs as root: root is no admin here


async def _verify(job_id: str, uid: int) -> dict:
    if job_id != "42":
        raise Forbidden(f"job_id: job {job_id} is not running", field="job_id")
    return {"account": "chem", "job_id": job_id, "name": "vqe-h2"}


async def _accounts(user: str) -> list[str]:
    return ["phys", "chem"]


SLURM = SlurmIntegration(verify_job=_verify, user_accounts=_accounts)


def test_require_slurm_job_per_pool_and_class(tmp_path):
    policy = {"pools": {"null": {"require_slurm_job": True}},
              "classes": {"premium": {"require_slurm_job": True}}}

    async def body():
        async with daemon(tmp_path, NULL, workers=False, policy=policy, auth=NOT_ADMIN, hooks=SLURM) as (d, api, _):
            for req, where in (({"pool": "null"}, "pool 'null'"), ({"pool": "aer", "class": "premium"},
                                                                    "class 'premium'")):
                st, err = await api.call("POST", "/v1/sessions", req)
                assert st == 403 and err["error"]["field"] == "job_id", err
                assert where in err["error"]["message"]
                # a job Slurm does not confirm is refused too
                st, err = await api.call("POST", "/v1/sessions", {**req, "job_id": "7"})
                assert st == 403 and err["error"]["field"] == "job_id", err
                st, s = await api.call("POST", "/v1/sessions", {**req, "job_id": "42"})
                assert st == 201 and s["account"] == "chem" and s["job_id"] == "42", s
            # neither required: no job needed
            st, s = await api.call("POST", "/v1/sessions", {"pool": "aer"})
            assert st == 201, s
        # admins are exempt
        async with daemon(tmp_path / "2", NULL, workers=False, policy=policy, hooks=SLURM) as (d, api, _):
            st, s = await api.call("POST", "/v1/sessions", {"pool": "null"})
            assert st == 201, s
        # without the Slurm hooks nothing can be verified: refused
        async with daemon(tmp_path / "3", NULL, workers=False, policy=policy, auth=NOT_ADMIN) as (d, api, _):
            st, err = await api.call("POST", "/v1/sessions", {"pool": "null", "job_id": "42"})
            assert st == 403 and err["error"]["field"] == "job_id", err
    asyncio.run(body())


def test_a_session_without_a_job_is_bound_by_its_persons_account_quota(tmp_path):
    """Before: charged to an account named after the user, it ran past phys's used-up quota."""
    policy = {"quotas": {"phys": {"device_s": 0, "period": "1d"}}}

    async def body():
        async with daemon(tmp_path, NULL, policy=policy, auth=NOT_ADMIN, hooks=SLURM) as (d, api, _):
            # charged to the default Slurm account, not the user's name: phys's used-up quota refuses it
            st, err = await api.call("POST", "/v1/sessions", {"pool": "null"})
            assert st == 429 and err["error"]["field"] == "quota.phys", err
            # another of the person's Slurm accounts may be named; the user's own name may not
            st, other = await api.call("POST", "/v1/sessions", {"pool": "null", "account": "chem"})
            assert st == 201 and other["account"] == "chem", other
            st, err = await api.call("POST", "/v1/sessions", {"pool": "null", "account": "root"})
            assert st == 403 and err["error"]["field"] == "account", err
    asyncio.run(body())


def test_a_session_for_a_job_is_named_after_it(tmp_path):
    """`qsched session list` showed '-' for every session the SPANK plugin opened: it sends no name."""
    async def body():
        async with daemon(tmp_path, NULL, workers=False, hooks=SLURM) as (d, api, _):
            st, s = await api.call("POST", "/v1/sessions", {"pool": "aer", "job_id": "42"})
            assert st == 201 and s["name"] == "vqe-h2", s
            st, s = await api.call("POST", "/v1/sessions", {"pool": "aer", "job_id": "42", "name": "mine"})
            assert st == 201 and s["name"] == "mine", s
    asyncio.run(body())
