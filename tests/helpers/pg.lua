-- A PostgreSQL of the specs' own: initdb and pg_ctl in a temporary directory, on a Unix socket
-- only (no TCP), trust authentication, superuser "certhook". initdb refuses to run as root, so
-- under root (CI) the cluster runs as the unprivileged user nobody. One cluster per spec file,
-- stopped and removed at the end (cleanup, or when busted exits).
local fs = require "helpers.fs"

local M = {}
M.__index = M

local live = {}
M.reaper = setmetatable({}, { __gc = function()
  for pg in pairs(live) do pcall(pg.cleanup, pg) end
end })

-- The directory of initdb and pg_ctl: the newest PostgreSQL installed (Debian's layout).
local function bindir()
  local out = fs.run("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1")
  local dir = out and out:match("[^\n]+")
  local f = dir and io.open(dir .. "/initdb", "rb")
  if f then f:close() end
  return f and dir or nil
end

M.available = bindir() ~= nil

-- Runs a PostgreSQL program as the cluster's user; asserts it worked.
function M:as_owner(cmd)
  -- (not under the sanitizer build's preloaded runtime: PostgreSQL is not built for it)
  local out, err, code = fs.run("unset LD_PRELOAD; " .. self.prefix .. cmd)
  assert(code == 0, cmd .. ": " .. (err or "") .. (out or ""))
  return out
end

-- start() -> a running cluster
function M.start()
  local bin = assert(bindir(), "PostgreSQL is not installed (apt-get install postgresql-15)")
  local self = setmetatable({ dir = fs.tmpdir(), bin = bin, prefix = "" }, M)
  live[self] = true
  if (fs.run("id -u") or ""):match("^0") then
    assert(os.execute(("chown nobody '%s' && chmod 755 '%s'"):format(self.dir, self.dir)))
    self.prefix = "cd / && runuser -u nobody -- "
  end
  self:as_owner(("'%s/initdb' -D '%s/db' -U certhook --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync")
    :format(bin, self.dir))
  self:start_server()
  return self
end

-- Starts the server of the cluster (again): fsync off (a process that dies loses nothing; the
-- machine does not), small, on the socket in dir.
function M:start_server()
  self:as_owner(("'%s/pg_ctl' -D '%s/db' -l '%s/db/log' -w -t 30 -o \"-k %s -c listen_addresses= " ..
    "-c fsync=off -c full_page_writes=off -c shared_buffers=16MB -c max_connections=60\" start")
    :format(self.bin, self.dir, self.dir, self.dir))
  self.running = true
end

-- Stops the server: mode "fast" (a clean stop) or "immediate" (like a crash).
function M:stop_server(mode)
  self:as_owner(("'%s/pg_ctl' -D '%s/db' -w -t 30 -m %s stop"):format(self.bin, self.dir, mode or "fast"))
  self.running = false
end

-- The URI of database db (default "postgres").
function M:uri(db)
  return ("postgresql://certhook@/%s?host=%s"):format(db or "postgres", self.dir)
end

local n = 0
-- A new, empty database: returns its name.
function M:createdb()
  n = n + 1
  local name = ("t%d_%d"):format(n, math.random(1e6))
  self:sql("postgres", "CREATE DATABASE " .. name)
  return name
end

-- Rows of a query on database db, as arrays of strings (NULL as "").
function M:sql(db, query)
  local tmp = os.tmpname()
  fs.write(tmp, query)
  local out, err, code = fs.run(("unset LD_PRELOAD; psql -X -q -At -F '|' -v ON_ERROR_STOP=1 '%s' -f '%s'"):format(self:uri(db), tmp))
  os.remove(tmp)
  assert(code == 0, "psql: " .. (err or ""))
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local row = {}
    for v in (line .. "|"):gmatch("(.-)|") do row[#row + 1] = v end
    rows[#rows + 1] = row
  end
  return rows
end

function M:cleanup()
  if self.cleaned then return end
  self.cleaned = true
  live[self] = nil
  if self.running then pcall(self.stop_server, self, "immediate") end
  fs.rm(self.dir)
end

return M
