-- Temporary directories and files for the specs.
local M = {}

function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

function M.write(path, content)
  local dir = path:match("^(.*)/[^/]*$")
  if dir then os.execute("mkdir -p '" .. dir .. "'") end
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  -- configs hold secrets: private, as certhook requires of them
  if path:match("%.conf%.lua$") then os.execute("chmod 600 '" .. path .. "'") end
  return path
end

function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function M.rm(path)
  os.execute("rm -rf '" .. path .. "'")
end

-- Runs a shell command; returns its stdout, stderr and exit status.
function M.run(cmd)
  local out, err = os.tmpname(), os.tmpname()
  local ok, _, code = os.execute(("(%s) >%s 2>%s"):format(cmd, out, err))
  local o, e = M.read(out), M.read(err)
  os.remove(out)
  os.remove(err)
  return o, e, ok and 0 or code
end

-- Polls fn every 20 ms until it returns a true value or `seconds` pass; returns that value.
function M.wait_for(fn, seconds)
  local socket = require "socket"
  local deadline = socket.gettime() + (seconds or 5)
  repeat
    local v = fn()
    if v then return v end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return nil
end

return M
