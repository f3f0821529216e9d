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

-- `certhook reload` against srv: stdout, stderr, exit status.
local function reload(srv)
  return fs.run(("%s reload --admin 127.0.0.1:%d --config %s/certhook.conf.lua"):format(Server.certhook, srv.admin, srv.dir))
end

-- The first log line pred accepts, waited for up to 5 s (a line the dispatcher writes as it
-- starts may come after the one that says the server listens).
local function find_log(srv, pred)
  return fs.wait_for(function()
    for _, l in ipairs(srv:logs()) do
      if pred(l) then return l end
    end
  end, 5)
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
  teardown(function() if srv then srv:cleanup() end end)

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

-- Regression (issue 21.12): globals were per file, but the standard library and the string
-- metatable were shared: one file's string.upper = ... changed what every other file got.
describe("what handler files share", function()
  local srv
  local TRIES = {
    { "string.upper", 'string.upper = function() return "evil" end' },
    { "table.concat", 'table.concat = function() return "evil" end' },
    { "string.lower", 'getmetatable("").__index.lower = function() return "evil" end' },
    { "string", 'rawset(string, "upper", function() return "evil" end)' },
    { "string.upper", 'package.loaded.string.upper = function() return "evil" end' },
    { "string.upper", 'local _, s = pairs(string); s.upper = function() return "evil" end' },
    { "certhook.log.info", 'require("certhook").log.info = function() end' },
    { "math.pi", "math.pi = 3" },
    { "global leaked", 'load("leaked = 1")()' },
  }
  setup(function()
    local tries = {}
    for _, t in ipairs(TRIES) do tries[#tries + 1] = ("  function() %s end,\n"):format(t[2]) end
    srv = Server.start {
      config = SOURCES,
      handlers = {
        ["a.lua"] = RECORD .. [[
          _G.x = "from a"
          local tries = {
]] .. table.concat(tries) .. [[
          }
          return { ["certificate.validation.failed"] = function(e)
            for i, f in ipairs(tries) do
              local ok, err = pcall(f)
              record("try" .. i, e, ok and "changed it" or err)
            end
          end }]],
        ["b.lua"] = RECORD .. [[
          return { ["certificate.renewal.failed"] = function(e)
            record("b", e, table.concat({ ("abc"):upper(), table.concat({ "a", "b" }, ","),
              ("ABC"):lower(), string.upper("x"), tostring(math.pi):sub(1, 4),
              tostring(x), tostring(_G.x), tostring(leaked), type(require("certhook").log.info) }, " "))
          end }]],
      },
    }
  end)
  teardown(function() if srv then srv:cleanup() end end)

  it("is read-only to each file: writes raise naming the file and line, and no other file sees them", function()
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "try" .. #TRIES, id) == 1 end, 10), srv:log_text())
    for i, t in ipairs(TRIES) do
      local err = calls(srv, "try" .. i, id)[1]
      assert.truthy(err:find(t[1], 1, true) and err:match("read%-only"), t[2] .. ": " .. err)
      if i < #TRIES then -- (load's chunk has a name of its own)
        assert.truthy(err:match("^[^ ]*a%.lua:%d+: "), t[2] .. ": " .. err)
      end
    end
    local other = post(srv, "renewal.failed")
    assert(fs.wait_for(function() return #calls(srv, "b", other) == 1 end, 10))
    assert.are.equal("ABC a,b abc X 3.14 nil nil nil function", calls(srv, "b", other)[1])
  end)
end)

describe("loading a handler file", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES .. "reload = { timeout = 1 }\n",
      handlers = { ["a.lua"] = RECORD .. 'return { ["*"] = function(e) record("a", e) end }' },
    }
  end)
  teardown(function() if srv then srv:cleanup() end end)

  it("that loops is stopped at reload.timeout with file:line; the server keeps serving", function()
    fs.write(srv.dir .. "/handlers/b.lua", "local n = 0\nwhile true do\n  n = n + 1\nend\n")
    local t0 = socket.gettime()
    local out, err, code = reload(srv)
    assert.are.equal(1, code, out)
    assert.truthy(err:match("b%.lua: loading took longer than reload%.timeout %(1 s%) and was stopped at [^\n]*b%.lua:%d"), err)
    assert.is_true(socket.gettime() - t0 < 5)
    -- a loop that catches the stop with pcall is stopped all the same
    fs.write(srv.dir .. "/handlers/b.lua", "while true do pcall(function() while true do end end) end\n")
    out, err, code = reload(srv)
    assert.are.equal(1, code, out)
    assert.truthy(err:match("b%.lua: loading took longer than reload%.timeout"), err)
    os.remove(srv.dir .. "/handlers/b.lua")
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "a", id) == 1 end, 10), "the old handlers stopped")
  end)

  it("that runs out of memory names the file", function()
    -- (1 MiB at a time: the limit is reached well within reload.timeout, even under ASan)
    fs.write(srv.dir .. "/handlers/m.lua", "local t = {}\nfor i = 1, 1e9 do t[i] = ('x'):rep(1 << 20) .. i end\n")
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
  teardown(function() if srv then srv:cleanup() end end)

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

describe("a handler that the limits cannot stop", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 10, timeout = 1, backoff = 4, max_backoff = 4 }\n",
      handlers = {
        ["poison.lua"] = RECORD .. [[
          return {
            ["certificate.deployment.failed"] = function(e)
              record("poison", e)
              setmetatable({}, { __gc = function() while true do end end }) -- no hook runs in __gc
              collectgarbage()
            end,
            ["certificate.deployment.succeeded"] = function(e) record("ok", e) end,
          }]],
      },
    }
  end)
  teardown(function() if srv then srv:cleanup() end end)


  it("stalls the dispatcher: certhook exits, and at the second death the delivery is dead", function()
    local t0 = socket.gettime()
    local id = post(srv, "deployment.failed")
    assert.are.equal(70, srv:wait_exit(15), "certhook did not exit on the stall")
    assert.is_true(socket.gettime() - t0 < 1 + 5 + 2, "detected later than delivery.timeout + grace")
    local l = assert(find_log(srv, function(l) return l.message and l.message:match("a handler has stalled the dispatcher") end))
    assert.are.equal(id, l.event)
    assert.are.equal("poison.lua:certificate.deployment.failed", l.handler)

    srv:launch() -- what the supervisor does
    l = assert(find_log(srv, function(l) return l.message and l.message:match("was running when certhook died; the attempt counts") end))
    assert.are.equal(id, l.event)
    -- new events flow while the poison event waits for its backoff
    local ok = post(srv, "deployment.succeeded")
    assert(fs.wait_for(function() return #calls(srv, "ok", ok) == 1 end, 2), "new events wait behind the poison")
    assert.are.equal(1, #calls(srv, "poison", id))
    assert.are.same({ "retrying", "1" }, { srv:delivery(id, "poison.lua:certificate.deployment.failed")[1],
      srv:delivery(id, "poison.lua:certificate.deployment.failed")[2] })

    assert.are.equal(70, srv:wait_exit(20), "the retry did not stall again")
    assert.are.equal(2, #calls(srv, "poison", id))
    srv:launch()
    local row = assert(srv:wait_status(id, "poison.lua:certificate.deployment.failed", "dead", 5))
    assert.truthy(row[3]:match("running when certhook died"), row[3])
    assert(find_log(srv, function(l) return l.message and l.message:match("running when certhook died, again: it is dead") end))
    local after = post(srv, "deployment.succeeded")
    assert(fs.wait_for(function() return #calls(srv, "ok", after) == 1 end, 5))
    socket.sleep(1.5)
    assert.are.equal(2, #calls(srv, "poison", id)) -- never again
  end)
end)

describe("a handler that runs away", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1, timeout = 1 }\n",
      handlers = {
        ["r.lua"] = RECORD .. [[
          return {
            ["certificate.validation.failed"] = function(e) -- an error whose __tostring loops
              error(setmetatable({}, { __tostring = function() while true do end end }))
            end,
            ["certificate.renewal.failed"] = function(e) -- a loop in a nested coroutine
              if debug.sethook then debug.sethook() end
              local co = coroutine.wrap(function() while true do end end)
              co()
              while true do end
            end,
            ["certificate.renewal.succeeded"] = function(e)
              local t <close> = setmetatable({}, { __close = function() while true do end end })
              error("fails, and its __close loops")
            end,
            ["certificate.issuance.succeeded"] = function(e) record("ok", e) end,
          }]],
      },
    }
  end)
  teardown(function() if srv then srv:cleanup() end end)

  it("is stopped, recorded dead, and the server goes on", function()
    local t0 = socket.gettime()
    local a = post(srv, "validation.failed")
    local b = post(srv, "renewal.failed")
    local c = post(srv, "renewal.succeeded")
    local ra = assert(srv:wait_status(a, "r.lua:certificate.validation.failed", "dead", 10))
    assert.truthy(ra[3]:match("could not be described") or ra[3]:match("deadline"), ra[3])
    local rb = assert(srv:wait_status(b, "r.lua:certificate.renewal.failed", "dead", 10))
    assert.truthy(rb[3]:match("ran past its deadline"), rb[3])
    local rc = assert(srv:wait_status(c, "r.lua:certificate.renewal.succeeded", "dead", 10))
    assert.truthy(rc[3]:match("fails, and its __close loops"), rc[3])
    assert.is_true(socket.gettime() - t0 < 8)
    local ok = post(srv, "issuance.succeeded")
    assert(fs.wait_for(function() return #calls(srv, "ok", ok) == 1 end, 5))
    assert.is_nil(fs.read(srv.dir .. "/exit"))
  end)
end)

-- Regression (issue 21.1): closing the handler states at a stop runs the finalizers a handler
-- left behind, with hooks off (Lua's rule): one that loops held SIGTERM forever. The journal is
-- closed first, then the states under the stall detector, which ends the process cleanly.
describe("a stop after a handler left looping finalizers behind", function()
  for _, case in ipairs {
    { "that loop", "while true do end" },
    { "that loop catching every error", "while true do pcall(function() while true do end end) end" },
  } do
    it("finishes within shutdown_grace plus a few seconds, the journal closed first: finalizers " .. case[1], function()
      local srv = Server.start {
        config = SOURCES .. "delivery = { timeout = 2, shutdown_grace = 1 }\n",
        handlers = {
          ["g.lua"] = RECORD .. ([[
            local keep = {} -- collected only when the state closes
            return { ["certificate.validation.failed"] = function(e)
              for i = 1, 10 do keep[#keep + 1] = setmetatable({}, { __gc = function() %s end }) end
              record("ok", e)
            end }]]):format(case[2]),
        },
      }
      local id = post(srv, "validation.failed")
      assert(srv:wait_status(id, "g.lua:certificate.validation.failed", "done", 5))
      local t0 = socket.gettime()
      srv:signal("TERM")
      local code = srv:wait_exit(1 + 6)
      local took = socket.gettime() - t0
      if not code then srv:signal("KILL") end
      assert.are.equal(0, code, ("certhook did not exit after SIGTERM (%.1f s)"):format(took))
      assert.truthy(find_log(srv, function(l) return l.message == "stopped" end), srv:log_text())
      assert.truthy(find_log(srv, function(l) return l.message and l.message:match("did not finish while the handler states closed") end))
      -- the journal was closed cleanly: the next start runs nothing again, and serves
      srv:launch()
      local again = post(srv, "validation.failed")
      assert(srv:wait_status(again, "g.lua:certificate.validation.failed", "done", 5))
      assert.are.same({ "done", "1" }, { table.unpack(srv:delivery(id, "g.lua:certificate.validation.failed"), 1, 2) })
      assert.are.equal(1, #calls(srv, "ok", id))
      srv:stop("KILL")
      srv:cleanup()
    end)
  end
end)

describe("handlers that do not load at the start", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES,
      handlers = {
        ["a.lua"] = RECORD .. 'return { ["*"] = function(e) record("a", e) end }',
        ["b.lua"] = "return { ['*'] = function(e) end\n", -- a syntax error
      },
    }
  end)
  teardown(function() if srv then srv:cleanup() end end)

  it("cost no webhook: intake journals, /readyz says why, and a fix delivers the backlog", function()
    local ids = {}
    for i = 1, 3 do ids[i] = post(srv, "validation.failed") end
    local http = require "helpers.http"
    local r = http.get(srv.admin, "/readyz")
    assert.are.equal(503, r.status)
    assert.truthy(r.json.last_reload_error:match("b%.lua:2"), r.json.last_reload_error)
    local m = http.get(srv.admin, "/metrics").body
    assert.truthy(m:match("\ncerthook_last_reload_success 0\n"), m)
    assert.truthy(m:match("\ncerthook_ready 0\n"))
    assert(find_log(srv, function(l) return l.message and l.message:match("the handlers did not load") end))
    socket.sleep(0.5)
    assert.are.equal(0, #calls(srv, "a"))

    fs.write(srv.dir .. "/handlers/b.lua", "return {}\n") -- fixed: the watcher reloads
    assert(fs.wait_for(function() return #calls(srv, "a") == 3 end, 10), "the backlog was not delivered")
    for i = 1, 3 do assert.are.equal(1, #calls(srv, "a", ids[i])) end
    assert.are.equal(200, http.get(srv.admin, "/readyz").status)
  end)

  it("a second server on the same data directory exits 1 naming the first one's PID", function()
    local out, err, code = fs.run(("cd '%s' && timeout 10 %s serve --config certhook.conf.lua"):format(srv.dir, Server.certhook))
    assert.are.equal(1, code, out .. err)
    assert.truthy(err:match("another certhook serve %(pid " .. srv.pid .. "%) is using the data directory"), err)
    -- readers still work meanwhile
    local _, err2, code2 = fs.run(("%s events --data '%s/data'"):format(Server.certhook, srv.dir))
    assert.are.equal(0, code2, err2)
  end)
end)

describe("retries", function()
  local FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
  local srv, clock
  -- libfaketime deadlocks at start beside AddressSanitizer's preload: in the sanitizer build
  -- (make SANITIZE=1 test) this test is left to the normal build
  if (os.getenv("LD_PRELOAD") or ""):match("libasan") then
    pending("the clock test runs in the normal build (libfaketime and ASan do not start together)")
    return
  end
  setup(function()
    assert(fs.read(FAKETIME), "libfaketime is needed for this test (Debian package faketime)")
    local dir = fs.tmpdir()
    clock = dir .. "/faketime"
    fs.write(clock, "+0s\n")
    srv = Server.start {
      dir = dir,
      env = { LD_PRELOAD = FAKETIME, FAKETIME_TIMESTAMP_FILE = clock, FAKETIME_NO_CACHE = "1",
        DONT_FAKE_MONOTONIC = "1" },
      config = SOURCES .. "delivery = { max_attempts = 3, backoff = 2, max_backoff = 2 }\n",
      handlers = {
        ["clock.lua"] = RECORD .. [[
          local n = 0
          return { ["*"] = function(e)
            n = n + 1
            record("attempt", e, n)
            if n == 1 then error("first attempt fails") end
          end }]],
      },
    }
  end)
  teardown(function() if srv then srv:cleanup() end end)

  it("follow the monotonic clock, not the wall clock", function()
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "attempt", id) == 1 end, 5))
    fs.write(clock, "-3600s\n") -- the wall clock steps back an hour; the retry is due in 1-2 s
    local t0 = socket.gettime()
    assert(fs.wait_for(function() return #calls(srv, "attempt", id) == 2 end, 5),
      "a step back of the wall clock delayed the retry")
    assert.is_true(socket.gettime() - t0 < 2.5)
  end)
end)

describe("the journal's WAL", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES .. "journal = { max_wal = 1048576, busy_timeout = 0.3 }\n",
      handlers = { ["a.lua"] = 'return { ["*"] = function(e) end }' },
    }
  end)
  teardown(function() if srv then srv:cleanup() end end)

  local function wal_size()
    local f = io.open(srv.dir .. "/data/certhook.db-wal", "rb")
    if not f then return 0 end
    local n = f:seek("end")
    f:close()
    return n
  end

  it("is cut back once a reader that held a snapshot ends, and the hold is logged", function()
    -- a reader holds one snapshot for 4 s, as `sqlite3 .backup` of a busy journal does
    os.execute(("(sqlite3 '%s/data/certhook.db' 'BEGIN' 'SELECT count(*) FROM events' '.shell sleep 4' 'COMMIT' >/dev/null 2>&1 &)")
      :format(srv.dir))
    socket.sleep(0.3)
    local t0, peak = socket.gettime(), 0
    for _ = 1, 300 do
      post(srv, "validation.failed")
      peak = math.max(peak, wal_size())
      if socket.gettime() - t0 > 3 then break end
    end
    assert.is_true(peak > 4 * 1048576, "the WAL never grew: " .. peak)
    assert(find_log(srv, function(l) return l.message and l.message:match("a reader keeps the journal's WAL from being checkpointed") end),
      "the hold was not logged")
    local m = require("helpers.http").get(srv.admin, "/metrics").body
    assert.truthy(m:match("\ncerthook_journal_wal_bytes %d"), m)
    assert.truthy(m:match("\ncerthook_journal_checkpoint_behind_seconds %d"), m)
    -- the reader ends at ~4 s: the WAL goes back under max_wal without any further write
    assert(fs.wait_for(function() return wal_size() <= 1048576 end, 8),
      ("the WAL stayed at %d bytes after the reader ended"):format(wal_size()))
    post(srv, "validation.failed")
    assert.is_true(wal_size() < 4 * 1048576)
  end)
end)

describe("a transfer whose response does not fit in the handler's memory", function()
  local Sink = require "helpers.sink"
  local sink, srv
  setup(function()
    sink = Sink.start()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1, timeout = 10, memory_limit = 8 << 20 }\n",
      handlers = {
        ["big.lua"] = RECORD .. ([[
          local certhook = require "certhook"
          return {
            ["certificate.validation.failed"] = function(e)
              -- the echo of 3 MiB, as a string and decoded, is more than the state may hold:
              -- pushing the response raises, after the handler was resumed
              local big = ("x"):rep(3 * 1024 * 1024)
              local ok, err = pcall(certhook.http.post, %q, big)
              record("big", e, tostring(ok) .. " " .. tostring(err))
            end,
            ["certificate.issuance.succeeded"] = function(e) record("ok", e) end,
          }]]):format(sink.url .. "/echo"),
      },
    }
  end)
  teardown(function()
    if srv then srv:cleanup() end
    sink:stop()
  end)

  it("raises in that handler only, and frees the transfer", function()
    local id = post(srv, "validation.failed")
    assert(fs.wait_for(function() return #calls(srv, "big", id) == 1 end, 15))
    local got = calls(srv, "big", id)
    assert.are.equal(1, #got)
    assert.truthy(got[1]:match("^false .*not enough memory"), got[1]) -- caught by pcall
    local ok = post(srv, "issuance.succeeded")
    assert(fs.wait_for(function() return #calls(srv, "ok", ok) == 1 end, 5))
    assert.are.equal(0, srv:stop()) -- the sanitizer build aborts on a bad free or use
  end)
end)
