--[[
qsched job_submit/lua: quantum requests at submission time.

A job asks for quantum access with --gres=qpu:N, -L qpu:N, --qpu[=POOL] or --qpu-class=CLASS (the
SPANK plugin's options). This script
  * gives it the license qpu:N (cluster-wide admission: Licenses=qpu:K in slurm.conf lets at most K
    quantum slots run at once; the next job pends with reason Licenses),
  * turns the GRES request into the plugin's options (so slurmstepd opens the job's session) with the
    site defaults for pool and class,
  * rejects an unknown class or pool, or a count over the maximum, with a message sbatch prints.
Install: job_submit.lua beside slurm.conf, JobSubmitPlugins=lua; `scontrol reconfigure` reloads it.
--]]

-- site settings -------------------------------------------------------------------------------------
local QSCHED = {
	default_pool = "aer",
	default_class = "batch",
	classes = { interactive = true, batch = true, debug = true },
	-- nil: any pool name the daemon knows (it refuses unknown pools when the session opens)
	pools = nil,
	max_qpu = 4,                  -- largest N in one job's qpu:N
	plugin = "qsched",            -- SPANK plugin name (prefix of its option variables)
}

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

-- "qpu:2,foo:1" -> 2 (nil when no qpu license); "qpu" alone counts 1
local function qpu_from_licenses(s)
	if s == nil or s == "" then return nil end
	local total = nil
	for item in string.gmatch(s, "[^,|]+") do
		local name, n = string.match(item, "^%s*([%w_.-]+)[:=]?(%d*)%s*$")
		if name == "qpu" then total = (total or 0) + (tonumber(n) or 1) end
	end
	return total
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
	local lic_n = qpu_from_licenses(job_desc.licenses)
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
	local pool = opt_pool
	if pool == nil or pool == "" then pool = QSCHED.default_pool end
	local class = opt_class
	if class == nil or class == "" then class = QSCHED.default_class end
	if not QSCHED.classes[class] then
		local names = {}
		for k, _ in pairs(QSCHED.classes) do names[#names + 1] = k end
		table.sort(names)
		return reject("unknown qpu class '%s' (known: %s)", class, table.concat(names, ", "))
	end
	if QSCHED.pools ~= nil and not QSCHED.pools[pool] then
		return reject("unknown qpu pool '%s'", pool)
	end

	-- admission: the license, unless the user already asked for it
	if lic_n == nil then
		if job_desc.licenses == nil or job_desc.licenses == "" then
			job_desc.licenses = "qpu:" .. n
		else
			job_desc.licenses = job_desc.licenses .. ",qpu:" .. n
		end
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
