-- Starts `certhook serve` on ephemeral ports in a temporary directory, as the e2e specs need
-- it: real process, real HTTP. The server's log is JSON lines in <dir>/server.log.
local cjson = require "cjson"
local fs = require "helpers.fs"
local http = require "helpers.http"

local M = {}
M.__index = M

-- Every server not yet cleaned up. A test that fails half-way never reaches its cleanup (and
-- busted's `finally` is not visible from a module), so whatever is left when busted exits is
-- stopped then: the suite leaves no certhook running behind it.
local live = {}
M.reaper = setmetatable({}, { __gc = function()
  for srv in pairs(live) do pcall(srv.cleanup, srv) end
end })

M.certhook = os.getenv("CERTHOOK") or (io.popen("pwd"):read("l") .. "/build/certhook-dev")

-- The journal of the servers of a directory: dir/data, or with CERTHOOK_TEST_JOURNAL=postgresql
-- (the specs of the shared journal's parity run) a database of a PostgreSQL of the specs' own,
-- one per directory.
local pg, dbs = nil, {}
local function journal_of(dir)
  if os.getenv("CERTHOOK_TEST_JOURNAL") ~= "postgresql" then return dir .. "/data" end
  pg = pg or require("helpers.pg").start()
  dbs[dir] = dbs[dir] or pg:createdb()
  return pg:uri(dbs[dir])
end

-- start{ config = "lua text", handlers = { ["x.lua"] = "source" }, dir = optional,
--        env = { NAME = "value" } }
-- The config gets listen/admin on port 0 and handlers/data in dir unless it sets them;
-- srv.data: the journal (--data of the command line).
function M.start(opts)
  local self = setmetatable({ dir = opts.dir or fs.tmpdir(), env = "" }, M)
  self.data = journal_of(self.dir)
  for k, v in pairs(opts.env or {}) do
    self.env = self.env .. ("%s='%s' "):format(k, v)
  end
  for name, src in pairs(opts.handlers or {}) do
    fs.write(self.dir .. "/handlers/" .. name, src)
  end
  os.execute("mkdir -p '" .. self.dir .. "/handlers'")
  local config = 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nhandlers = "handlers"\n' ..
    ("data = %q\n"):format(self.data:match("^postgresql:") and self.data or "data") ..
    "journal = { busy_timeout = 0.3 }\n" .. (opts.config or "")
  fs.write(self.dir .. "/certhook.conf.lua", config)
  live[self] = true
  self:launch()
  return self
end

function M:launch()
  os.remove(self.dir .. "/exit")
  local log_before = fs.read(self.dir .. "/server.log") or ""
  self.log_offset = #log_before
  local cmd = ("cd '%s' && (%s%s serve --config certhook.conf.lua %s >>server.log 2>&1 & pid=$!; echo $pid >pid; wait $pid; echo $? >exit) >/dev/null 2>&1 &")
    :format(self.dir, self.env, M.certhook, self.extra_args or "")
  os.execute(cmd)
  local ready = fs.wait_for(function()
    local log = (fs.read(self.dir .. "/server.log") or ""):sub(self.log_offset + 1)
    local line = log:match('[^\n]*"message":"listening"[^\n]*')
    if line then return cjson.decode(line) end
    local listen, admin = log:match(" listening listen=(%S+) .*admin=(%S+)") -- log.format = "text"
    if listen then return { listen = listen, admin = admin } end
    if fs.read(self.dir .. "/exit") then return false end
  end, 15)
  if not ready then
    local pid = tonumber(fs.read(self.dir .. "/pid") or "")
    if pid then os.execute(("kill -KILL %d 2>/dev/null"):format(pid)) end
    error("certhook serve did not start:\n" .. (fs.read(self.dir .. "/server.log") or ""))
  end
  self.pid = tonumber(fs.read(self.dir .. "/pid"))
  self.port = tonumber(ready.listen:match(":(%d+)$"))
  self.admin = tonumber(ready.admin:match(":(%d+)$"))
end

-- The log lines written since the last launch, decoded.
function M:logs()
  local out = {}
  local text = (fs.read(self.dir .. "/server.log") or ""):sub(self.log_offset + 1)
  for line in text:gmatch("[^\n]+") do
    local ok, v = pcall(cjson.decode, line)
    out[#out + 1] = ok and v or { message = line }
  end
  return out
end

function M:log_text()
  return fs.read(self.dir .. "/server.log") or ""
end

function M:post(path, body, headers)
  return http.post(self.port, path, body, headers)
end

function M:request(...)
  return http.request(self.port, ...)
end

function M:signal(sig)
  os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid))
end

-- Waits up to `seconds` for the process to exit; returns its exit status, or nil. (The shell
-- creates the file before it writes the status: an empty file is not an exit yet.)
function M:wait_exit(seconds)
  return tonumber(fs.wait_for(function()
    return (fs.read(self.dir .. "/exit") or ""):match("%d+")
  end, seconds))
end

-- Stops with SIGTERM (or sig); returns the exit status.
function M:stop(sig)
  self:signal(sig or "TERM")
  local code = self:wait_exit(15)
  if not code then
    self:signal("KILL")
    error("certhook serve did not exit after SIG" .. (sig or "TERM"))
  end
  return code
end

-- The credentials this server was configured with or was sent (the string literals of
-- secret = ..., admin_token = ..., password = ... in its config, and every cf-webhook-auth / bearer token the
-- specs sent), long enough to be told apart from ordinary words.
function M:secrets()
  local out, config = {}, fs.read(self.dir .. "/certhook.conf.lua") or ""
  for _, key in ipairs { "secret", "admin_token", "password" } do
    for value in config:gmatch("%f[%w_]" .. key .. "%s*=%s*(%b{})") do
      for s in value:gmatch('"([^"]*)"') do out[s] = true end
    end
    for s in config:gmatch("%f[%w_]" .. key .. '%s*=%s*"([^"]*)"') do out[s] = true end
  end
  for s in pairs(http.sent_secrets) do out[s] = true end
  for s in pairs(out) do
    if #s < 6 then out[s] = nil end
  end
  return out
end

-- Fails if any credential appears in the server's log (every e2e server is checked here).
function M:assert_no_secrets()
  local log = self:log_text()
  for s in pairs(self:secrets()) do
    if log:find(s, 1, true) then
      error(("the credential %q appears in the server log:\n%s"):format(s, log), 2)
    end
  end
end

function M:cleanup()
  if self.cleaned then return end
  self.cleaned = true
  live[self] = nil
  if self.pid and not fs.read(self.dir .. "/exit") then self:stop("KILL") end
  local ok, err = pcall(self.assert_no_secrets, self)
  fs.rm(self.dir)
  if not ok then error(err, 0) end
end

-- The relation that holds every delivery as a row, for queries: on SQLite the view
-- all_deliveries (a delivery that succeeded at its first attempt has no row of deliveries: it is
-- kept in its event's row), on PostgreSQL the table deliveries.
function M:deliveries()
  return dbs[self.dir] and "deliveries" or "all_deliveries"
end

-- The journal's record of the delivery of event `id` to `handler` ("file:pattern"):
-- { status, attempts, last error ("" if none), the event's state } as strings, or nil.
function M:delivery(id, handler)
  return self:sql(("SELECT d.status, d.attempts, coalesce(d.last_error, ''), e.state FROM %s d " ..
    "JOIN events e ON e.seq = d.event_seq WHERE e.id = '%s' AND d.handler = '%s'"):format(self:deliveries(), id, handler))[1]
end

-- Waits up to `seconds` (10) for that delivery to reach `status`; returns its record, or nil.
function M:wait_status(id, handler, status, seconds)
  return fs.wait_for(function()
    local row = self:delivery(id, handler)
    return row and row[1] == status and row
  end, seconds or 10)
end

-- Rows of an SQL query on the journal (via the sqlite3 command line, or psql), as arrays of
-- strings. On PostgreSQL a bytea (a body, a state value) reads as its text, as sqlite3 prints a
-- blob: printable bytes as they are (psql's default is hex).
function M:sql(query)
  if dbs[self.dir] then
    return pg:sql(dbs[self.dir], "SET search_path = certhook;\nSET bytea_output = escape;\n" .. query)
  end
  local out, err, code = fs.run(("sqlite3 -separator '|' '%s/data/certhook.db' \"%s\""):format(self.dir, query))
  assert(code == 0, err)
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local row = {}
    for v in (line .. "|"):gmatch("(.-)|") do row[#row + 1] = v end
    rows[#rows + 1] = row
  end
  return rows
end

return M
