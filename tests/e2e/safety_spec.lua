-- Nothing a handler does takes the receiver down (DESIGN §10, issue 12): limits no handler can
-- switch off, no exits, no blocking calls (certhook.exec instead), a file's globals its own,
-- loops at load time stopped, a stuck dispatcher detected and restarted, a poison event that
-- goes dead instead of crash-looping, retries on the monotonic clock, one server per data
-- directory, a bounded WAL, and handlers that fail to load never costing the webhooks.
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'

-- Appends "<tag> <event id> [extra]" to calls.log in the server directory.
local RECORD = [[
local function record(tag, e, extra)
  local f = assert(io.open("calls.log", "a"))
  f:write(tag, " ", e.id, extra and (" " .. extra) or "", "\n")
  f:close()
end
]]

local function calls(srv, tag, id)
  local out = {}
  for line in (fs.read(srv.dir .. "/calls.log") or ""):gmatch("[^\n]+") do
    local t, i, extra = line:match("^(%S+) (%S+) ?(.*)$")
    if t == tag and (id == nil or i == id) then out[#out + 1] = extra end
  end
  return out
end

local function post(srv, kind)
  local body, id = events.cloudflare(kind)
  local r = srv:post("/hooks/cloudflare", body, CF)
  assert.are.equal(202, r.status, r.body)
  return id
end

local function delivery(srv, id, handler)
  local rows = srv:sql(("SELECT d.status, d.attempts, coalesce(d.last_error, '') FROM deliveries d " ..
    "JOIN events e ON e.seq = d.event_seq WHERE e.id = '%s' AND d.handler = '%s'"):format(id, handler))
  return rows[1]
end

local function wait_status(srv, id, handler, status, seconds)
  return fs.wait_for(function()
    local row = delivery(srv, id, handler)
    return row and row[1] == status and row
  end, seconds or 10)
end

-- `certhook reload` against srv: stdout, stderr, exit status.
local function reload(srv)
  return fs.run(("%s reload --admin 127.0.0.1:%d --config %s/certhook.conf.lua"):format(Server.certhook, srv.admin, srv.dir))
end

local function find_log(srv, pred)
  for _, l in ipairs(srv:logs()) do
    if pred(l) then return l end
  end
end

describe("a handler's reach", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1, timeout = 2 }\n",
      handlers = {
        ["a.lua"] = RECORD .. [[
          leaked = "from a"
          return { ["certificate.validation.failed"] = function(e)
            local ok, err = pcall(os.exit, 0)
            record("exit", e, ok and "returned" or err)
            ok, err = pcall(os.exit, true, true)
            record("exit2", e, ok and "returned" or err)
            ok, err = pcall(os.execute, "sleep 6")
            record("execute", e, ok and "returned" or err)
            ok, err = pcall(io.popen, "sleep 6")
            record("popen", e, ok and "returned" or err)
            record("debug", e, tostring(debug.sethook) .. " " .. tostring(require("debug").sethook)
              .. " " .. type(debug.traceback))
          end }]],
        ["b.lua"] = RECORD .. [[
          return { ["certificate.validation.failed"] = function(e)
            record("globals", e, tostring(leaked) .. " " .. tostring(_G.leaked))
          end }]],
      },
    }
  end)
  teardown(function() srv:cleanup() end)

  it("os.exit raises in a handler, os.execute and io.popen raise pointing to certhook.exec", function()
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "debug", id) == 1 end, 10), "the handler did not run")
    assert.truthy(calls(srv, "exit", id)[1]:match("os%.exit is not available to handlers"))
    assert.truthy(calls(srv, "exit2", id)[1]:match("os%.exit is not available to handlers"))
    assert.truthy(calls(srv, "execute", id)[1]:match("os%.execute is not available to handlers.*certhook%.exec"))
    assert.truthy(calls(srv, "popen", id)[1]:match("io%.popen is not available to handlers.*certhook%.exec"))
    assert.are.same({ "nil nil function" }, calls(srv, "debug", id))
    assert.are.equal(0, tonumber((srv:request("GET", "/hooks/cloudflare").status == 405) and 0 or 1))
  end)

  it("each handler file has its own globals", function()
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "globals", id) == 1 end, 10))
    assert.are.same({ "nil nil" }, calls(srv, "globals", id))
  end)

  it("os.exit while loading is a load error, and the server keeps its handlers", function()
    fs.write(srv.dir .. "/handlers/c.lua", "os.exit(1)\nreturn {}\n")
    local out, err, code = reload(srv)
    assert.are.equal(1, code, out)
    assert.truthy(err:match("c%.lua:1: os%.exit is not available to handlers"), err)
    os.remove(srv.dir .. "/handlers/c.lua")
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "globals", id) == 1 end, 10))
  end)
end)

describe("loading a handler file", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES .. "delivery = { timeout = 1 }\n",
      handlers = { ["a.lua"] = RECORD .. 'return { ["*"] = function(e) record("a", e) end }' },
    }
  end)
  teardown(function() srv:cleanup() end)

  it("that loops is stopped at delivery.timeout with file:line; the server keeps serving", function()
    fs.write(srv.dir .. "/handlers/b.lua", "local n = 0\nwhile true do\n  n = n + 1\nend\n")
    local t0 = socket.gettime()
    local out, err, code = reload(srv)
    assert.are.equal(1, code, out)
    assert.truthy(err:match("b%.lua: loading took longer than delivery%.timeout %(1 s%) and was stopped at [^\n]*b%.lua:%d"), err)
    assert.is_true(socket.gettime() - t0 < 5)
    -- a loop that catches the stop with pcall is stopped all the same
    fs.write(srv.dir .. "/handlers/b.lua", "while true do pcall(function() while true do end end) end\n")
    out, err, code = reload(srv)
    assert.are.equal(1, code, out)
    assert.truthy(err:match("b%.lua: loading took longer than delivery%.timeout"), err)
    os.remove(srv.dir .. "/handlers/b.lua")
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "a", id) == 1 end, 10), "the old handlers stopped")
  end)

  it("that runs out of memory names the file", function()
    fs.write(srv.dir .. "/handlers/m.lua", "local t = {}\nfor i = 1, 1e9 do t[i] = ('x'):rep(1000) .. i end\n")
    local _, err, code = reload(srv)
    assert.are.equal(1, code)
    assert.truthy(err:match("m%.lua: loading needed more memory than delivery%.memory_limit %(%d+ bytes%) and was stopped at [^\n]*m%.lua:2"), err)
    os.remove(srv.dir .. "/handlers/m.lua")
  end)
end)

describe("certhook.exec", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1, timeout = 10 }\n",
      handlers = {
        ["exec.lua"] = RECORD .. [[
          local certhook = require "certhook"
          return {
            ["certificate.validation.failed"] = function(e)
              local r = assert(certhook.exec{ argv = { "sh", "-c", "read x; echo out:$x; echo err >&2; exit 3" },
                stdin = e.hostname .. "\n" })
              record("output", e, ("%d|%s|%s"):format(r.status, r.stdout:gsub("\n", ""), r.stderr:gsub("\n", "")))
            end,
            ["certificate.issuance.failed"] = function(e)
              local r, err, code = certhook.exec{ argv = { "sh", "-c", "echo $$ >slow.pid; exec sleep 30" }, timeout = 1 }
              record("timeout", e, tostring(r) .. "|" .. tostring(code) .. "|" .. tostring(err))
            end,
            ["certificate.deployment.failed"] = function(e)
              record("slow-start", e)
              local r = assert(certhook.exec{ argv = { "sleep", "2" } })
              record("slow-end", e, r.status)
            end,
            ["certificate.deployment.succeeded"] = function(e)
              record("quick", e)
            end,
            ["certificate.deletion.failed"] = function(e)
              local r, err, code = certhook.exec{ argv = { "no-such-program-certhook" } }
              record("missing", e, tostring(r) .. "|" .. tostring(code))
            end,
          }]],
      },
    }
  end)
  teardown(function() srv:cleanup() end)

  it("returns the program's exit status, stdout and stderr, with stdin given", function()
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "output", id) == 1 end, 10), "no output")
    assert.are.same({ "3|out:blog.com|err" }, calls(srv, "output", id))
  end)

  it("kills the program at its timeout", function()
    local id = post(srv, "issuance.failed")
    assert(fs.wait_for(function() return #calls(srv, "timeout", id) == 1 end, 10), "no timeout")
    local rec = calls(srv, "timeout", id)[1]
    assert.truthy(rec:match("^nil|timeout|the program ran longer than its timeout"), rec)
    local pid = assert(tonumber(fs.read(srv.dir .. "/slow.pid")))
    assert(fs.wait_for(function() return not fs.read(("/proc/%d/stat"):format(pid)) end, 5),
      "the program still runs after its timeout")
  end)

  it("lets other deliveries run while a program runs", function()
    local slow = post(srv, "deployment.failed")
    assert(fs.wait_for(function() return #calls(srv, "slow-start", slow) == 1 end, 10))
    local quick = post(srv, "deployment.succeeded")
    assert(fs.wait_for(function() return #calls(srv, "quick", quick) == 1 end, 1.5),
      "a delivery waited for another one's program")
    assert.are.equal(0, #calls(srv, "slow-end", slow))
    assert(fs.wait_for(function() return #calls(srv, "slow-end", slow) == 1 end, 10))
    assert.are.same({ "0" }, calls(srv, "slow-end", slow))
  end)

  it("returns nil, message, \"spawn\" for a program that is not there", function()
    local id = post(srv, "deletion.failed")
    assert(fs.wait_for(function() return #calls(srv, "missing", id) == 1 end, 10))
    assert.are.same({ "nil|spawn" }, calls(srv, "missing", id))
  end)
end)
