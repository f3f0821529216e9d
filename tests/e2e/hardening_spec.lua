-- What standard tools and hostile clients found at the edge (issue 13), rerun as tests: every
-- start cuts off slowloris clients, per-address connection limits, HTTP framing that smuggles
-- (Content-Length with Transfer-Encoding, unknown codings, chunked bodies over the limit),
-- NUL bytes in request data, hostile values in authenticated payloads, core dumps, TLS suites,
-- IBM token lifetimes and the admin listener's Host and Origin checks.
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local http = require "helpers.http"
local Server = require "helpers.server"

local SECRET = "hardening-secret-0001"
local CF = { ["cf-webhook-auth"] = SECRET }
local SOURCES = ('sources = { cloudflare = { provider = "cloudflare", secret = %q } }\n'):format(SECRET)

local event = events.cloudflare

-- Starts n CPU burners (busy shell loops); returns a function that stops them.
local function burn(n)
  local pids = {}
  for i = 1, n do
    local f = os.tmpname()
    os.execute(("sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $! >%s"):format(f))
    pids[i] = tonumber(fs.read(f))
    os.remove(f)
  end
  return function()
    for _, pid in ipairs(pids) do os.execute(("kill %d 2>/dev/null"):format(pid)) end
  end
end

-- A connection that has sent a request line and is trickling header lines (slowloris).
local function trickler(port)
  local c = socket.tcp()
  c:settimeout(2)
  assert(c:connect("127.0.0.1", port))
  assert(c:send("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\n"))
  c:settimeout(0)
  return c
end

-- Keeps every connection of conns trickling for up to `seconds`; returns how many the server
-- closed meanwhile.
local function trickle(conns, seconds)
  local closed, t0 = {}, socket.gettime()
  repeat
    for i, c in ipairs(conns) do
      if not closed[i] then
        local _, err = c:receive(1)
        if err == "closed" then
          closed[i] = true
        else
          c:send("X-Slow: a\r\n")
        end
      end
    end
    local n = 0
    for _ in pairs(closed) do n = n + 1 end
    if n == #conns then break end
    socket.sleep(0.2)
  until socket.gettime() - t0 > seconds
  local n = 0
  for i, c in ipairs(conns) do
    if closed[i] then n = n + 1 end
    c:close()
  end
  return n
end

describe("slowloris defence", function()
  -- regress/13-1: the sweeper thread checked its flag before the starter set it and, under
  -- load, some starts ran without it. 50 starts (5 rounds of 10 servers at once) while two
  -- CPU burners run; each must cut off a client trickling headers past request_timeout.
  it("cuts off a trickling client in every start, under CPU load", function()
    local stop = burn(2)
    local ok, err = pcall(function()
      for round = 1, 5 do
        local servers, conns = {}, {}
        for i = 1, 10 do
          servers[i] = Server.start { config = SOURCES .. "limits = { request_timeout = 1 }\n" }
          conns[i] = trickler(servers[i].port)
        end
        local closed = trickle(conns, 4)
        for _, srv in ipairs(servers) do srv:cleanup() end
        assert.are.equal(10, closed, ("round %d: %d of 10 starts cut the client off"):format(round, closed))
      end
    end)
    stop()
    assert(ok, err)
  end)
end)

describe("core dumps", function()
  -- Starts serve as the user nobody (as root every /proc file is root's anyway); returns the
  -- owner uid of /proc/<pid>/status -- root's (0) when the process is not dumpable -- then
  -- stops it.
  local function proc_owner(env)
    local dir = fs.tmpdir()
    fs.write(dir .. "/certhook.conf.lua", 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n' ..
      'handlers = "handlers"\ndata = "data"\n' .. SOURCES)
    os.execute(("mkdir -p '%s/handlers' && chown -R 65534:65534 '%s'"):format(dir, dir))
    os.execute(("cd '%s' && (%s setpriv --reuid 65534 --regid 65534 --clear-groups %s serve " ..
      "--config certhook.conf.lua >server.log 2>&1 & echo $! >pid)"):format(dir, env, Server.certhook))
    local pid = tonumber(fs.wait_for(function() return fs.read(dir .. "/pid") end, 5))
    assert(fs.wait_for(function() return (fs.read(dir .. "/server.log") or ""):match('"listening"') end, 15),
      fs.read(dir .. "/server.log"))
    local out = fs.run(("stat -c %%u /proc/%d/status"):format(pid))
    os.execute(("kill %d; while kill -0 %d 2>/dev/null; do sleep 0.05; done"):format(pid, pid))
    fs.rm(dir)
    return tonumber(out)
  end

  -- regress/13-6: a core image held the webhook secret and the admin token
  it("makes serve non-dumpable unless CERTHOOK_ALLOW_CORE_DUMPS=1", function()
    assert.are.equal(0, proc_owner(""))
    assert.are.equal(65534, proc_owner("CERTHOOK_ALLOW_CORE_DUMPS=1"))
  end)

  it("sets LimitCORE=0 in the example systemd unit", function()
    assert.truthy(fs.read("examples/systemd/certhook.service"):match("\nLimitCORE=0\n"))
  end)
end)

describe("connections per address", function()
  local function connect(port, from)
    local c = socket.tcp()
    c:settimeout(2)
    if from then assert(c:bind(from, 0)) end
    assert(c:connect("127.0.0.1", port))
    return c
  end

  -- regress/13-2: one client could take every connection slot
  it("closes connections past limits.max_connections_per_ip while other addresses are served", function()
    local srv = Server.start { config = SOURCES .. "limits = { max_connections_per_ip = 3 }\n" }
    local held = {}
    for i = 1, 3 do held[i] = connect(srv.port) end
    socket.sleep(0.2)
    local extra = connect(srv.port)
    extra:send("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    local line, err = extra:receive("*l")
    assert.is_nil(line)
    assert.truthy(err == "closed" or err:match("reset"), err)
    extra:close()
    -- another address still gets in
    local other = connect(srv.port, "127.0.0.2")
    local body = event()
    other:send(("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\ncf-webhook-auth: %s\r\n" ..
      "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"):format(SECRET, #body, body))
    assert.truthy((other:receive("*l") or ""):match("^HTTP/1%.1 202"))
    other:close()
    for _, c in ipairs(held) do c:close() end
    -- and the address gets in again once its connections are gone
    assert(fs.wait_for(function()
      local ok, r = pcall(srv.post, srv, "/hooks/cloudflare", (event()), CF)
      return ok and r.status == 202
    end, 5))
    srv:cleanup()
  end)

  it("defaults to 64 per address", function()
    local srv = Server.start { config = SOURCES }
    local held = {}
    for i = 1, 64 do held[i] = connect(srv.port) end
    socket.sleep(0.2)
    local extra = connect(srv.port)
    extra:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    local line, err = extra:receive("*l")
    assert.is_nil(line, line)
    assert.truthy(err == "closed" or err:match("reset"), err)
    for _, c in ipairs(held) do c:close() end
    extra:close()
    srv:cleanup()
  end)
end)
