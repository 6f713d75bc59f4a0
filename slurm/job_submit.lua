--[[
qsched job_submit/lua: quantum requests at submission time.

A job asks for quantum access with --gres=qpu:N, -L qpu:N, -L qpu_POOL:N, --qpu[=POOL] or
--qpu-class=CLASS (the SPANK plugin's options). This script
  * gives it the license of its pool, qpu_POOL:N, when qsched_site.lua names the pools' licences (else
    the one cluster-wide qpu:N). Licenses=qpu_aer:K,... in slurm.conf lets at most K quantum slots of
    the pool run at once; the next job pends with reason Licenses,
  * turns the GRES request into the plugin's options (so slurmstepd opens the job's session) with the
    site defaults for pool and class,
  * rejects an unknown class or pool, or a count over the maximum, with a message sbatch prints.
Install: job_submit.lua beside slurm.conf, JobSubmitPlugins=lua; `scontrol reconfigure` reloads it.
The pools, classes and defaults come from qsched_site.lua beside it, which `qsched slurm sync` writes
from the daemon's config (one source for both); without that file the built-in table below holds.
--]]

-- site settings (qsched_site.lua overrides them) -----------------------------------------------------
local QSCHED = {
	default_pool = "aer",
	default_class = "batch",
	classes = { interactive = true, batch = true, debug = true },
	-- nil: any pool name (the daemon refuses unknown pools when the session opens) and the one qpu
	-- licence; { aer = "qpu_aer", ... }: only these pools, each with its own licence
	pools = nil,
	max_qpu = 4,                  -- largest N in one job's qpu:N
	plugin = "qsched",            -- SPANK plugin name (prefix of its option variables)
}

local function script_dir()
	local src = debug.getinfo(1, "S").source
	if string.sub(src, 1, 1) == "@" then return string.match(src, "^@(.*)/[^/]*$") end
	return nil
end

local SITE_FILE = (script_dir() or "/etc/slurm") .. "/qsched_site.lua"

local function load_site()
	local f = io.open(SITE_FILE, "r")
	if f == nil then return end
	f:close()
	local ok, site = pcall(dofile, SITE_FILE)
	if not ok or type(site) ~= "table" then
		slurm.log_error("qsched: %s: %s (keeping the built-in settings)", SITE_FILE, tostring(site))
		return
	end
	for k, v in pairs(site) do QSCHED[k] = v end
end
load_site()

-- licence name -> pool, for jobs that ask for a pool's licence directly (-L qpu_aer:1)
local POOL_OF_LICENSE = {}
if QSCHED.pools ~= nil then
	for pool, lic in pairs(QSCHED.pools) do
		if type(lic) == "string" then POOL_OF_LICENSE[lic] = pool end
	end
end

-- helpers -------------------------------------------------------------------------------------------
local OPT_PREFIX = "_SLURM_SPANK_OPTION_" .. QSCHED.plugin .. "_"
local OPT_POOL = OPT_PREFIX .. "qpu"
local OPT_CLASS = OPT_PREFIX .. "qpu_class"

-- "gres:qpu:2", "gres/qpu:2", "gres:qpu", "gpu:1,gres:qpu:3" -> total qpu count or nil
local function qpu_from_tres(s)
	if s == nil or s == "" then return nil end
	local total = nil
	for item in string.gmatch(s, "[^,]+") do
		local name, rest = string.match(item, "^gres[:/](%w+)(.*)$")
		if name == nil then name, rest = string.match(item, "^(%w+)(.*)$") end
		if name == "qpu" then
			-- optional :type before the count
			local n = string.match(rest, ":(%d+)$")
			total = (total or 0) + (tonumber(n) or 1)
		end
	end
	return total
end

-- "qpu:2,foo:1" -> 2, nil, {"foo:1"}; "qpu_aer:1" -> 1, "aer", {} (nil count when no qpu licence;
-- "qpu" alone counts 1). Returns the count, the pool a pool licence names (false when two pools are
-- named), and the other licences.
local function qpu_from_licenses(s)
	if s == nil or s == "" then return nil, nil, {} end
	local total, pool, others = nil, nil, {}
	for item in string.gmatch(s, "[^,]+") do
		local name, n = string.match(item, "^%s*([%w_.-]+)[:=]?(%d*)%s*$")
		local lic_pool = name and POOL_OF_LICENSE[name]
		if name == "qpu" or lic_pool then
			total = (total or 0) + (tonumber(n) or 1)
			if lic_pool then
				if pool ~= nil and pool ~= lic_pool then pool = false else pool = lic_pool end
			end
		else
			others[#others + 1] = item
		end
	end
	return total, pool, others
end

-- spank_job_env is a list-like table of "NAME=value" strings
local function env_get(env, name)
	if env == nil then return nil end
	for _, kv in pairs(env) do
		local k, v = string.match(kv, "^([^=]+)=(.*)$")
		-- an optional option argument left out is recorded as "(null)"
		if k == name then
			if v == "(null)" then return "" end
			return v
		end
	end
	return nil
end

local function reject(fmt, ...)
	slurm.log_user("qsched: " .. fmt, ...)
	return slurm.ERROR
end

-- the hook ------------------------------------------------------------------------------------------
function slurm_job_submit(job_desc, part_list, submit_uid)
	local gres_n = nil
	for _, field in ipairs({ "tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket" }) do
		local n = qpu_from_tres(job_desc[field])
		if n ~= nil then gres_n = (gres_n or 0) + n end
	end
	local lic_n, lic_pool, other_licenses = qpu_from_licenses(job_desc.licenses)
	local env = job_desc.spank_job_env
	local opt_pool = env_get(env, OPT_POOL)
	local opt_class = env_get(env, OPT_CLASS)

	if gres_n == nil and lic_n == nil and opt_pool == nil and opt_class == nil then
		return slurm.SUCCESS -- not a quantum job
	end

	local n = gres_n or lic_n or 1
	if n < 1 then
		return reject("qpu count must be at least 1 (got %d)", n)
	end
	if n > QSCHED.max_qpu then
		return reject("qpu:%d is over the maximum of %d per job", n, QSCHED.max_qpu)
	end
	if lic_pool == false then
		return reject("licences of two qpu pools in one job (%s)", job_desc.licenses)
	end
	local pool = opt_pool
	if pool ~= nil and pool ~= "" and lic_pool ~= nil and pool ~= lic_pool then
		return reject("licence %s is for pool '%s', not --qpu=%s", QSCHED.pools[lic_pool], lic_pool, pool)
	end
	if pool == nil or pool == "" then pool = lic_pool or QSCHED.default_pool end
	local class = opt_class
	if class == nil or class == "" then class = QSCHED.default_class end
	if not QSCHED.classes[class] then
		local names = {}
		for k, _ in pairs(QSCHED.classes) do names[#names + 1] = k end
		table.sort(names)
		return reject("unknown qpu class '%s' (known: %s)", class, table.concat(names, ", "))
	end
	if QSCHED.pools ~= nil and not QSCHED.pools[pool] then
		local names = {}
		for k, _ in pairs(QSCHED.pools) do names[#names + 1] = k end
		table.sort(names)
		return reject("unknown qpu pool '%s' (known: %s)", pool, table.concat(names, ", "))
	end

	-- admission: the pool's licence (or the one qpu licence), in place of any qpu licence asked for
	local lic = "qpu"
	if QSCHED.pools ~= nil and type(QSCHED.pools[pool]) == "string" then lic = QSCHED.pools[pool] end
	if lic_n == nil or lic ~= "qpu" then
		other_licenses[#other_licenses + 1] = lic .. ":" .. n
		job_desc.licenses = table.concat(other_licenses, ",")
	end

	-- The plugin's options with the defaults filled in, so slurmstepd opens the session. spank_job_env
	-- is read-only here (22.05), but slurmstepd also takes options from a batch job's environment.
	-- Jobs without a batch script (srun/salloc) need --qpu itself for the plugin to act.
	if job_desc.script ~= nil and job_desc.environment ~= nil then
		job_desc.environment[OPT_POOL] = pool
		job_desc.environment[OPT_CLASS] = class
	end

	-- Record the request where the daemon can read it back (squeue --json admin_comment); only
	-- admins can change AdminComment, so users cannot forge it. qsched rewrites it with the
	-- job's quantum usage when the session closes.
	job_desc.admin_comment = string.format("qsched:qpu=%d,pool=%s,class=%s", n, pool, class)

	slurm.log_info("qsched: job from uid %u: qpu:%d pool=%s class=%s", submit_uid, n, pool, class)
	return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	return slurm.SUCCESS
end

return slurm.SUCCESS
