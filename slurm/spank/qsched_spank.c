/*
 * qsched SPANK plugin: quantum access for Slurm jobs.
 *
 * Options (registered with spank_option_register so sbatch/salloc see them too):
 *   --qpu[=POOL]        ask for quantum access, optionally naming a device pool
 *   --qpu-class=CLASS   policy class (interactive, batch, debug, ...); implies --qpu
 *
 * plugstack.conf arguments (all optional):
 *   admin_socket=PATH[,PATH...]  daemon's admin unix socket (default /var/lib/qsched/admin.sock); several:
 *                       a leader and its standbys, tried in turn (a standby does not listen)
 *   url=URL[,URL...]    what QSCHED_URL says in jobs (default unix://<dir of each admin_socket>/qsched.sock)
 *   pool=NAME           default pool                 (default aer)
 *   class=NAME          default class                (default batch)
 *   on_down=fail|continue  daemon unreachable at job start: fail the tasks, or run without a session
 *   timeout=SECONDS     socket timeout for one admin request (default 5)
 *   retry=SECONDS       keep trying to open the session for this long while no daemon answers or it
 *                       answers 503 (restarting, draining, a standby taking over) (default 30; 0: once)
 *
 * In slurmstepd (remote context) on the job's first node the plugin opens the job's session with
 * POST /v1/admin/sessions and exports QSCHED_URL, QSCHED_POOL, QSCHED_CLASS, QSCHED_SESSION; the step
 * that opened it closes it at exit with DELETE /v1/admin/sessions/{sid}. Steps that already see
 * QSCHED_SESSION (srun inside an sbatch job) reuse it. The close happens when the step's last local
 * task exits (the job still RUNNING, so its AdminComment can take the usage), else at plugin exit. Errors never leave init_post_opt (a failure there
 * drains the node); they are reported from task_init, in the job's own stderr.
 */
#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

SPANK_PLUGIN(qsched, 1);

#define PLUGIN "qsched"
#define NAME_MAX_LEN 64
#define ID_MAX_LEN 128
#define ERR_MAX_LEN 512
#define RESP_MAX 8192

#define OPT_QPU 1
#define OPT_CLASS 2

/* plugstack arguments */
static char admin_socket[1024] = "/var/lib/qsched/admin.sock";	/* comma-separated */
static char url[1024] = "";
static char default_pool[NAME_MAX_LEN] = "aer";
static char default_class[NAME_MAX_LEN] = "batch";
static int on_down_fail = 1;
static int timeout_s = 5;
static int retry_s = 30;

/* per-process state: options seen, session opened here, error deferred to task_init */
static int want_qpu = 0;
static char opt_pool[NAME_MAX_LEN] = "";
static char opt_class[NAME_MAX_LEN] = "";
static char session_id[ID_MAX_LEN] = "";
static int session_owned = 0;
static char deferred_err[ERR_MAX_LEN] = "";
static int deferred_fatal = 0;

static int opt_cb(int val, const char *optarg, int remote);

static struct spank_option qpu_options[] = {
	{"qpu", "[POOL]", "Quantum access through qsched, optionally naming a device pool", 2, OPT_QPU,
	 (spank_opt_cb_f)opt_cb},
	{"qpu-class", "CLASS", "qsched policy class for this job's quantum tasks (implies --qpu)", 1,
	 OPT_CLASS, (spank_opt_cb_f)opt_cb},
	SPANK_OPTIONS_TABLE_END};

static void defer(int fatal, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void defer(int fatal, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(deferred_err, sizeof(deferred_err), fmt, ap);
	va_end(ap);
	deferred_fatal = fatal;
	slurm_error("%s: %s", PLUGIN, deferred_err);
}

/* Pool and class names go into JSON and env: keep them to a safe alphabet. */
static int valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= NAME_MAX_LEN)
		return 0;
	for (; *s; s++) {
		char c = *s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return 0;
	}
	return 1;
}

static int copy_arg(char *dst, size_t cap, const char *src)
{
	if (strlen(src) >= cap)
		return -1;
	strcpy(dst, src);
	return 0;
}

static int opt_cb(int val, const char *optarg, int remote)
{
	const char *what = val == OPT_QPU ? "--qpu" : "--qpu-class";

	want_qpu = 1;
	/* an optional argument left out reaches slurmstepd as the string "(null)" */
	if (optarg && !strcmp(optarg, "(null)"))
		optarg = NULL;
	if (optarg == NULL || optarg[0] == '\0') {
		if (val == OPT_CLASS) {
			if (!remote) {
				slurm_error("%s: --qpu-class needs a CLASS", PLUGIN);
				return -1;
			}
			defer(1, "--qpu-class needs a CLASS");
		}
		return 0;
	}
	if (!valid_name(optarg)) {
		/* locally (sbatch/srun) an error stops the submission; remotely, defer it */
		if (!remote) {
			slurm_error("%s: invalid %s value '%s' (letters, digits, '-', '_', '.')", PLUGIN,
				    what, optarg);
			return -1;
		}
		defer(1, "invalid %s value '%s'", what, optarg);
		return 0;
	}
	strcpy(val == OPT_QPU ? opt_pool : opt_class, optarg);
	return 0;
}

static void parse_args(int ac, char **av)
{
	for (int i = 0; i < ac; i++) {
		const char *a = av[i];
		int bad = 0;

		if (!strncmp(a, "admin_socket=", 13))
			bad = copy_arg(admin_socket, sizeof(admin_socket), a + 13);
		else if (!strncmp(a, "url=", 4))
			bad = copy_arg(url, sizeof(url), a + 4);
		else if (!strncmp(a, "pool=", 5))
			bad = !valid_name(a + 5) || copy_arg(default_pool, sizeof(default_pool), a + 5);
		else if (!strncmp(a, "class=", 6))
			bad = !valid_name(a + 6) || copy_arg(default_class, sizeof(default_class), a + 6);
		else if (!strcmp(a, "on_down=fail"))
			on_down_fail = 1;
		else if (!strcmp(a, "on_down=continue"))
			on_down_fail = 0;
		else if (!strncmp(a, "timeout=", 8)) {
			char *end = NULL;
			long t = strtol(a + 8, &end, 10);
			bad = !end || *end || t < 1 || t > 300;
			if (!bad)
				timeout_s = (int)t;
		} else if (!strncmp(a, "retry=", 6)) {
			char *end = NULL;
			long t = strtol(a + 6, &end, 10);
			bad = !end || *end || t < 0 || t > 600;
			if (!bad)
				retry_s = (int)t;
		} else
			bad = 1;
		/* a bad argument is an admin error: log it and keep the default, never fail the node */
		if (bad)
			slurm_error("%s: ignoring bad plugstack argument '%s'", PLUGIN, a);
	}
	if (url[0] == '\0') {
		/* one unix:// URL per admin socket, in the same order */
		size_t used = 0;
		for (const char *p = admin_socket; *p && used < sizeof(url);) {
			const char *end = strchr(p, ',');
			int len = end ? (int)(end - p) : (int)strlen(p);
			int dirlen = 0;
			for (int i = 0; i < len; i++)
				if (p[i] == '/')
					dirlen = i;
			int n = snprintf(url + used, sizeof(url) - used, "%sunix://%.*s/qsched.sock",
					 used ? "," : "", dirlen, p);
			if (n < 0)
				break;
			used += (size_t)n;
			if (!end)
				break;
			p = end + 1;
		}
	}
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();

	parse_args(ac, av);
	/* options exist where users type them (srun, sbatch, salloc) and where they are applied */
	if (ctx != S_CTX_LOCAL && ctx != S_CTX_REMOTE && ctx != S_CTX_ALLOCATOR)
		return 0;
	for (struct spank_option *o = qpu_options; o->name; o++) {
		spank_err_t rc = spank_option_register(sp, o);
		if (rc != ESPANK_SUCCESS) {
			slurm_error("%s: cannot register --%s: %s", PLUGIN, o->name, spank_strerror(rc));
			/* failing in remote context would drain the node */
			if (ctx != S_CTX_REMOTE)
				return -1;
		}
	}
	return 0;
}

/* ---- minimal HTTP/1.1 over AF_UNIX ------------------------------------------------------------ */

/* A connected socket to the first admin socket of the list that accepts (a standby daemon does not
 * listen), or -1 with the last error in err. */
static int connect_admin(char *err, size_t errcap)
{
	struct timeval tv = {.tv_sec = timeout_s, .tv_usec = 0};

	for (const char *p = admin_socket; *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		struct sockaddr_un addr;
		int fd;

		memset(&addr, 0, sizeof(addr));
		addr.sun_family = AF_UNIX;
		if (len == 0 || len >= sizeof(addr.sun_path)) {
			snprintf(err, errcap, "admin socket path empty or too long");
		} else {
			memcpy(addr.sun_path, p, len);
			fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (fd < 0) {
				snprintf(err, errcap, "socket: %s", strerror(errno));
				return -1;
			}
			if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
			    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
				snprintf(err, errcap, "setsockopt: %s", strerror(errno));
				close(fd);
				return -1;
			}
			if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
				return fd;
			snprintf(err, errcap, "connect %.*s: %s", (int)len, p, strerror(errno));
			close(fd);
		}
		if (!end)
			break;
		p = end + 1;
	}
	return -1;
}

/* Returns the HTTP status (>0), or -1 when the daemon cannot be reached (errno-style text in err). */
static int http_unix(const char *method, const char *path, const char *body, char *resp, size_t cap,
		     char *err, size_t errcap)
{
	char req[2048];
	size_t blen = body ? strlen(body) : 0;
	int fd, n, status = -1;
	size_t got = 0;

	n = snprintf(req, sizeof(req),
		     "%s %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: qsched-spank/1\r\n"
		     "Connection: close\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
		     method, path, blen);
	if (n < 0 || (size_t)n >= sizeof(req)) {
		snprintf(err, errcap, "request too long");
		return -1;
	}

	fd = connect_admin(err, errcap);
	if (fd < 0)
		return -1;
	for (const char *parts[2] = {req, body}, **p = parts; p < parts + 2; p++) {
		size_t len = *p ? strlen(*p) : 0, off = 0;
		while (off < len) {
			ssize_t w = send(fd, *p + off, len - off, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				snprintf(err, errcap, "send: %s", strerror(errno));
				goto out;
			}
			off += (size_t)w;
		}
	}
	/* Connection: close, so read to EOF */
	while (got + 1 < cap) {
		ssize_t r = recv(fd, resp + got, cap - 1 - got, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			snprintf(err, errcap, "recv: %s", strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	resp[got] = '\0';
	if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) {
		snprintf(err, errcap, "bad HTTP answer from daemon");
		status = -1;
	}
out:
	close(fd);
	return status;
}

static const char *http_body(const char *resp)
{
	const char *b = strstr(resp, "\r\n\r\n");
	return b ? b + 4 : "";
}

/* Find "key": "value" in a flat JSON answer; only used for the session id and error message. */
static int json_str(const char *json, const char *key, char *out, size_t cap)
{
	char pat[64];
	const char *p;
	size_t n = 0;

	snprintf(pat, sizeof(pat), "\"%s\"", key);
	for (p = strstr(json, pat); p; p = strstr(p + 1, pat)) {
		const char *q = p + strlen(pat);
		while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
			q++;
		if (*q != ':')
			continue;
		q++;
		while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
			q++;
		if (*q != '"')
			continue;
		for (q++; *q && *q != '"' && n + 1 < cap; q++) {
			if (*q == '\\' && q[1])
				q++;
			out[n++] = *q;
		}
		out[n] = '\0';
		return *q == '"' ? 0 : -1;
	}
	return -1;
}

static int valid_id(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '-' || *s == '_'))
			return 0;
	return 1;
}

/* User names in Slurm are POSIX portable names; anything else is refused rather than escaped. */
static int valid_user(const char *s)
{
	return valid_name(s);
}

static void export_env(spank_t sp, const char *var, const char *val)
{
	spank_err_t rc = spank_setenv(sp, var, val, 1);
	if (rc != ESPANK_SUCCESS)
		defer(1, "cannot set %s: %s", var, spank_strerror(rc));
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* POST /v1/admin/sessions, again while no daemon answers or it answers 503, for up to retry_s: a
 * daemon restarting (an upgrade, a config change) or a standby taking over must not fail the jobs that
 * start meanwhile. A request that timed out may have opened a session after all: the reconciler closes
 * such a stray one when the job ends. */
static int open_with_retry(const char *body, char *resp, size_t cap, char *err, size_t errcap)
{
	double deadline = now_s() + retry_s;
	useconds_t pause_us = 250000;

	for (;;) {
		int status = http_unix("POST", "/v1/admin/sessions", body, resp, cap, err, errcap);
		if ((status >= 0 && status != 503) || now_s() + pause_us / 1e6 > deadline)
			return status;
		usleep(pause_us);
		if (pause_us < 2000000)
			pause_us *= 2;
	}
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	uint32_t job_id = 0, step_id = 0, node_id = 0;
	uid_t uid = 0;
	char existing[ID_MAX_LEN], pool[NAME_MAX_LEN], klass[NAME_MAX_LEN], user[NAME_MAX_LEN];
	char body[512], resp[RESP_MAX], err[256], msg[256];
	struct passwd pw, *pwp = NULL;
	char pwbuf[4096];
	spank_err_t rc;
	int status;

	(void)ac;
	(void)av;
	/* everything below runs in slurmstepd; returning non-zero here would drain the node */
	if (spank_context() != S_CTX_REMOTE || !want_qpu || deferred_err[0])
		return 0;

	if ((rc = spank_get_item(sp, S_JOB_ID, &job_id)) != ESPANK_SUCCESS ||
	    (rc = spank_get_item(sp, S_JOB_STEPID, &step_id)) != ESPANK_SUCCESS ||
	    (rc = spank_get_item(sp, S_JOB_NODEID, &node_id)) != ESPANK_SUCCESS ||
	    (rc = spank_get_item(sp, S_JOB_UID, &uid)) != ESPANK_SUCCESS) {
		defer(1, "cannot read job items: %s", spank_strerror(rc));
		return 0;
	}
	/* the extern step holds no user code */
	if (step_id == SLURM_EXTERN_CONT)
		return 0;

	strcpy(pool, opt_pool[0] ? opt_pool : default_pool);
	strcpy(klass, opt_class[0] ? opt_class : default_class);
	export_env(sp, "QSCHED_URL", url);
	export_env(sp, "QSCHED_POOL", pool);
	export_env(sp, "QSCHED_CLASS", klass);
	if (deferred_err[0])
		return 0;

	/* a step inside a job that already has a session (srun in an sbatch script) reuses it */
	rc = spank_getenv(sp, "QSCHED_SESSION", existing, sizeof(existing));
	if (rc == ESPANK_SUCCESS && existing[0])
		return 0;
	/* one session per job: the first node opens it; other nodes' tasks attach by job id */
	if (node_id != 0)
		return 0;

	if (getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &pwp) != 0 || !pwp || !valid_user(pw.pw_name)) {
		defer(1, "cannot resolve a valid user name for uid %u", (unsigned)uid);
		return 0;
	}
	strcpy(user, pw.pw_name);

	snprintf(body, sizeof(body),
		 "{\"user\": \"%s\", \"uid\": %u, \"job_id\": %u, \"pool\": \"%s\", \"class\": \"%s\"}",
		 user, (unsigned)uid, job_id, pool, klass);
	status = open_with_retry(body, resp, sizeof(resp), err, sizeof(err));
	if (status < 0 || status == 503) {
		if (status == 503 && json_str(http_body(resp), "message", err, sizeof(err)) != 0)
			snprintf(err, sizeof(err), "HTTP 503");
		defer(on_down_fail, "qsched daemon unreachable for %d s (%s); on_down=%s", retry_s, err,
		      on_down_fail ? "fail" : "continue");
		return 0;
	}
	if (status < 200 || status >= 300) {
		/* the daemon answered and refused: a real error whatever on_down says */
		if (json_str(http_body(resp), "message", msg, sizeof(msg)) != 0)
			snprintf(msg, sizeof(msg), "%.200s", http_body(resp));
		defer(1, "daemon refused to open a session for job %u (HTTP %d): %s", job_id, status, msg);
		return 0;
	}
	if (json_str(http_body(resp), "id", session_id, sizeof(session_id)) != 0 || !valid_id(session_id)) {
		session_id[0] = '\0';
		defer(1, "daemon answer for job %u has no valid session id", job_id);
		return 0;
	}
	session_owned = 1;
	export_env(sp, "QSCHED_SESSION", session_id);
	slurm_info("%s: job %u step %u: opened session %s (pool %s, class %s)", PLUGIN, job_id, step_id,
		   session_id, pool, klass);
	return 0;
}

/* Runs in the task as the user, with the job's stdio: the place to report deferred errors. */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	(void)sp;
	(void)ac;
	(void)av;
	if (!deferred_err[0])
		return 0;
	fprintf(stderr, "%s: %s%s\n", PLUGIN, deferred_err,
		deferred_fatal ? "" : " (continuing without a quantum session)");
	fflush(stderr);
	return deferred_fatal ? -1 : 0;
}

static void close_session(void)
{
	char path[256], resp[RESP_MAX], err[256];
	int status;

	if (!session_owned)
		return;
	session_owned = 0;
	snprintf(path, sizeof(path), "/v1/admin/sessions/%s", session_id);
	status = http_unix("DELETE", path, NULL, resp, sizeof(resp), err, sizeof(err));
	/* 404: the reconciler or the user closed it first */
	if (status < 0)
		slurm_error("%s: cannot close session %s: %s (the daemon's reconciler will)", PLUGIN,
			    session_id, err);
	else if ((status < 200 || status >= 300) && status != 404)
		slurm_error("%s: closing session %s: HTTP %d", PLUGIN, session_id, status);
	else
		slurm_info("%s: closed session %s", PLUGIN, session_id);
}

/*
 * Close when the step's last local task has exited: the job is still RUNNING in slurmctld then, so
 * the daemon can still write the usage into its AdminComment (Slurm refuses updates to finished jobs).
 */
int slurm_spank_task_exit(spank_t sp, int ac, char **av)
{
	static uint32_t exited = 0;
	uint32_t ntasks = 1;

	(void)ac;
	(void)av;
	if (spank_context() != S_CTX_REMOTE || !session_owned)
		return 0;
	if (spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &ntasks) != ESPANK_SUCCESS)
		ntasks = 1;
	if (++exited >= ntasks)
		close_session();
	return 0;
}

/* Fallback: the step ended without its tasks exiting normally (launch failure, kill). */
int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	(void)sp;
	(void)ac;
	(void)av;
	if (spank_context() == S_CTX_REMOTE)
		close_session();
	return 0;
}
