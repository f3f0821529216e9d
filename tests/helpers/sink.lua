-- Starts build/sink (tests/helpers/sink.c), the HTTP server handlers call in the specs.
local fs = require "helpers.fs"

local M = {}
M.__index = M

local root = io.popen("pwd"):read("l")
local build = (os.getenv("CERTHOOK") or ""):match("^(.*)/certhook%-dev$") or (root .. "/build")

-- start{ tls = {cert, key} } -> sink with .port, .url
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({ dir = fs.tmpdir() }, M)
  local tls = opts.tls and (" --tls '%s' '%s'"):format(opts.tls[1], opts.tls[2]) or ""
  os.execute(("cd '%s' && (unset LD_PRELOAD; '%s/sink'%s >out 2>err & echo $! >pid)"):format(self.dir, build, tls))
  local line = fs.wait_for(function() return (fs.read(self.dir .. "/out") or ""):match("listening (%d+)") end, 10)
  assert(line, "the sink did not start: " .. (fs.read(self.dir .. "/err") or ""))
  self.pid = tonumber(fs.read(self.dir .. "/pid"))
  self.port = tonumber(line)
  self.url = ("%s://127.0.0.1:%d"):format(opts.tls and "https" or "http", self.port)
  return self
end

function M:stats()
  local http = require "helpers.http"
  return http.get(self.port, "/stats").json
end

-- The requests the sink received (echoes: method, path, query, headers, body), oldest first.
function M:requests()
  local http = require "helpers.http"
  return http.get(self.port, "/requests").json
end

function M:stop()
  os.execute(("kill -KILL %d 2>/dev/null"):format(self.pid))
  fs.rm(self.dir)
end

-- A self-signed certificate for 127.0.0.1 in dir: returns cert, key paths.
function M.self_signed(dir)
  local cert, key = dir .. "/sink.crt", dir .. "/sink.key"
  local _, err, code = fs.run(("openssl req -x509 -newkey rsa:2048 -nodes -keyout '%s' -out '%s' -days 2 " ..
    "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"):format(key, cert))
  assert(code == 0, err)
  return cert, key
end

return M
