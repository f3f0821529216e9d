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
    local _, _, code = fs.run(("setpriv --reuid 65534 --regid 65534 --clear-groups sh -c 'test -x %s && test -r %s'")
      :format(Server.certhook, "lua/bin/certhook"))
    if code ~= 0 then -- a checkout that user nobody cannot read: nothing to observe with
      pending("the user nobody cannot run " .. Server.certhook)
      return
    end
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

  -- A new connection that the server closes without an answer.
  local function assert_refused(port)
    local extra = connect(port)
    extra:send("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    local line, err = extra:receive("*l")
    extra:close()
    assert.is_nil(line, line)
    assert.truthy(err == "closed" or err:match("reset"), err)
  end

  -- regress/13-2: one client could take every connection slot
  it("closes connections past limits.max_connections_per_ip while other addresses are served", function()
    local srv = Server.start { config = SOURCES .. "limits = { max_connections_per_ip = 3 }\n" }
    local held = {}
    for i = 1, 3 do held[i] = connect(srv.port) end
    socket.sleep(0.2)
    assert_refused(srv.port)
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

  -- slowhttptest's slowloris from 127.0.0.1 at 200 new connections a second, while a
  -- provider posts from 127.0.0.2: the attacker gets its 20 slots, the provider the rest.
  it("keeps serving another address while slowhttptest floods from one", function()
    local srv = Server.start { config = SOURCES ..
      "limits = { max_connections = 100, max_connections_per_ip = 20, request_timeout = 2 }\n" }
    local dir = fs.tmpdir()
    os.execute(("cd '%s' && (unset LD_PRELOAD; slowhttptest -H -c 1000 -r 200 -i 1 -l 8 -p 2 -x 8 " ..
      "-u http://127.0.0.1:%d/hooks/cloudflare >slow.log 2>&1; echo done >exit) >/dev/null 2>&1 &")
      :format(dir, srv.port))
    socket.sleep(1)
    local ok, failed = 0, {}
    local t0 = socket.gettime()
    while socket.gettime() - t0 < 6 do
      local c = socket.tcp()
      c:settimeout(2)
      local body = event()
      local status
      if c:bind("127.0.0.2", 0) and c:connect("127.0.0.1", srv.port) then
        c:send(("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\ncf-webhook-auth: %s\r\nContent-Type: " ..
          "application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"):format(SECRET, #body, body))
        status = (c:receive("*l") or ""):match("^HTTP/1%.1 (%d+)")
      end
      c:close()
      if status == "202" then ok = ok + 1 else failed[#failed + 1] = tostring(status) end
      socket.sleep(0.25)
    end
    assert(fs.wait_for(function() return fs.read(dir .. "/exit") end, 15))
    local report = fs.read(dir .. "/slow.log") or ""
    fs.rm(dir)
    assert.are.same({}, failed)
    assert.is_true(ok >= 10, ok)
    assert.truthy(report:match("slowhttptest"), report)
    srv:cleanup()
  end)

  it("defaults to 64 per address", function()
    local srv = Server.start { config = SOURCES }
    local held = {}
    for i = 1, 64 do held[i] = connect(srv.port) end
    socket.sleep(0.2)
    assert_refused(srv.port)
    for _, c in ipairs(held) do c:close() end
    srv:cleanup()
  end)
end)

-- Sends raw bytes on a new connection and reads until the server closes it (or `seconds`
-- pass): everything received, whether it was closed, and how long that took.
local function exchange(port, bytes, seconds)
  local c = socket.tcp()
  c:settimeout(2)
  assert(c:connect("127.0.0.1", port))
  local t0 = socket.gettime()
  assert(c:send(bytes))
  local got, closed = {}, false
  c:settimeout(0.1)
  repeat
    local data, err, partial = c:receive(4096)
    data = data or partial
    if data and #data > 0 then got[#got + 1] = data end
    if err == "closed" then closed = true break end
  until socket.gettime() - t0 > (seconds or 4)
  c:close()
  return table.concat(got), closed, socket.gettime() - t0
end

local function status_lines(text)
  local n = 0
  for _ in text:gmatch("HTTP/1%.%d %d%d%d") do n = n + 1 end
  return n
end

describe("HTTP framing", function()
  local srv
  local HEAD = "POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
    "cf-webhook-auth: " .. SECRET .. "\r\n"
  setup(function()
    srv = Server.start { config = SOURCES .. "limits = { max_body = 1000, request_timeout = 5 }\n" }
  end)
  teardown(function() srv:cleanup() end)

  -- regress/13-5: processed, and the connection kept (RFC 9112 §6.1: close it)
  it("answers Content-Length with Transfer-Encoding 400 and closes the connection", function()
    local body = event()
    local chunked = ("%x\r\n%s\r\n0\r\n\r\n"):format(#body, body)
    local text, closed, took = exchange(srv.port, HEAD .. "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" .. chunked)
    assert.truthy(text:match("^HTTP/1%.1 400 "), text)
    assert.truthy(text:match("Transfer%-Encoding"), text)
    assert.is_true(closed)
    assert.is_true(took < 2, took)
    assert.are.equal(1, status_lines(text), text)
  end)

  it("answers an unknown Transfer-Encoding 501 at once and closes the connection", function()
    for _, te in ipairs { "gzip", "gzip, chunked", "identity", "chunked, chunked" } do
      local text, closed, took = exchange(srv.port, HEAD .. "Transfer-Encoding: " .. te .. "\r\n\r\n{}")
      assert.truthy(text:match("^HTTP/1%.1 501 "), te .. ": " .. text)
      assert.truthy(text:match('"error":"not_implemented"'), text)
      assert.is_true(closed, te)
      assert.is_true(took < 2, te .. ": " .. took)
    end
  end)

  it("answers two Content-Length headers 400", function()
    local text, closed = exchange(srv.port, HEAD .. "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}")
    assert.truthy(text:match("^HTTP/1%.1 400 "), text)
    assert.is_true(closed)
  end)

  -- libmicrohttpd 0.9.75 answers these itself, with its status line and headers twice
  it("answers a malformed or huge Content-Length with one clean status line", function()
    for _, case in ipairs { { "abc", "400" }, { "1x", "400" }, { "-1", "400" },
                            { "99999999999999999999999", "413" } } do
      local text, closed = exchange(srv.port, HEAD .. "Content-Length: " .. case[1] .. "\r\n\r\n{}")
      assert.truthy(text:match("^HTTP/1%.1 " .. case[2] .. " "), case[1] .. ": " .. text)
      assert.are.equal(1, status_lines(text), case[1] .. ": " .. text)
      assert.is_true(closed, case[1])
      local json = text:match("\r\n\r\n(.*)$")
      assert.truthy(pcall(cjson.decode, json), case[1] .. ": " .. text)
    end
  end)

  -- regress/13-4: the 413 came after the last chunk; 256 MiB were read in 4 s
  it("refuses a chunked body as soon as it passes limits.max_body", function()
    for _, size_line in ipairs { "10000000", "100" } do -- one huge chunk, or many small ones
      local c = socket.tcp()
      c:settimeout(2)
      assert(c:connect("127.0.0.1", srv.port))
      assert(c:send(HEAD .. "Transfer-Encoding: chunked\r\n\r\n"))
      local sent, reply, t0 = 0, nil, socket.gettime()
      while not reply and sent < 1 << 20 and socket.gettime() - t0 < 5 do
        local piece = size_line == "100" and ("100\r\n" .. ("a"):rep(256) .. "\r\n") or
          ((sent == 0 and "10000000\r\n" or "") .. ("a"):rep(256))
        local ok = c:send(piece)
        if not ok then break end
        sent = sent + #piece
        c:settimeout(0.02)
        local line = c:receive("*l")
        if line then reply = line end
      end
      c:settimeout(1)
      reply = reply or c:receive("*l")
      c:close()
      assert.truthy(reply and reply:match("^HTTP/1%.1 413 "), size_line .. ": " .. tostring(reply))
      assert.is_true(sent < 8192, size_line .. ": sent " .. sent .. " bytes before the reply")
    end
  end)

  -- issue 21: a chunk-size line past the limit, then a few bytes of its data, was waited for
  -- until request_timeout: libmicrohttpd reads the line itself and hands over the data as it comes
  it("refuses a chunk whose size line passes limits.max_body at once, before its data", function()
    local big = Server.start { config = SOURCES .. "limits = { max_body = 65536, request_timeout = 5 }\n" }
    for _, size_line in ipairs { "ffffffffffffffff", "7fffffffffffffff", "10000" } do
      -- after a chunk of one byte: 0x10000 bytes more are one past 64 KiB
      local text, closed, took = exchange(big.port, HEAD .. "Transfer-Encoding: chunked\r\n\r\n" ..
        "1\r\n{\r\n" .. size_line .. "\r\nabc")
      assert.truthy(text:match("^HTTP/1%.1 413 "), size_line .. ": " .. text)
      assert.are.equal(1, status_lines(text), text)
      assert.are.equal("payload_too_large", cjson.decode(text:match("\r\n\r\n(.*)$")).error)
      assert.is_true(closed, size_line)
      assert.is_true(took < 2, size_line .. ": " .. took)
    end
    big:cleanup()
  end)

  it("still takes a chunked body within the limit, and keeps the connection", function()
    local c = socket.tcp()
    c:settimeout(3)
    assert(c:connect("127.0.0.1", srv.port))
    for _ = 1, 2 do -- the second request on the same connection
      local b, id = event()
      assert(c:send(HEAD .. "Transfer-Encoding: chunked\r\n\r\n" ..
        ("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"):format(10, b:sub(1, 10), #b - 10, b:sub(11))))
      assert.truthy((c:receive("*l") or ""):match("^HTTP/1%.1 202"))
      local len
      repeat
        local h = c:receive("*l")
        len = len or tonumber(h:match("^[Cc]ontent%-[Ll]ength: (%d+)"))
      until h == ""
      local reply, err = c:receive(len)
      assert(reply, tostring(err) .. " " .. tostring(len))
      assert.are.equal(id, cjson.decode(reply).id) -- the whole body was taken
      assert.are.equal(1, #srv:sql(("SELECT 1 FROM events WHERE id = '%s'"):format(id)))
    end
    c:close()
  end)
end)

-- regress/13-10: NUL bytes cut C strings short: "/hooks/cloudflare%00.evil" routed to
-- cloudflare, "S3CRET\0junk" was the secret
describe("NUL bytes in the request", function()
  local srv
  local TOKEN = "admin-token-nul-0123456789"
  setup(function()
    srv = Server.start { config = SOURCES .. ('admin_token = %q\n'):format(TOKEN) }
  end)
  teardown(function() srv:cleanup() end)

  local function post(target, headers)
    local body = event()
    return exchange(srv.port, ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s" ..
      "Content-Length: %d\r\nConnection: close\r\n\r\n%s"):format(target, headers, #body, body))
  end

  it("refuses them in the path, escaped or not, and still decodes other escapes", function()
    local auth = "cf-webhook-auth: " .. SECRET .. "\r\n"
    for _, target in ipairs { "/hooks/cloudflare%00.evil", "/hooks/cloudflare\0.evil", "/hooks/cloudflare?a=b%00c" } do
      local text = post(target, auth)
      assert.truthy(text:match("^HTTP/1%.1 400 "), target .. ": " .. text)
      assert.truthy(text:match("NUL"), text)
    end
    assert.truthy(post("/hooks/cloud%66lare", auth):match("^HTTP/1%.1 202 "))
    assert.truthy(post("/hooks/cloudflare?x=1", auth):match("^HTTP/1%.1 202 "))
  end)

  it("refuses them in a header value or name", function()
    for _, h in ipairs { "cf-webhook-auth: " .. SECRET .. "\0junk\r\n",
                         "cf-webhook-auth: " .. SECRET .. "\r\nX-Other: a\0b\r\n",
                         "cf-webhook-auth: " .. SECRET .. "\r\nX-\0Other: ab\r\n" } do
      local text = post("/hooks/cloudflare", h)
      assert.truthy(text:match("^HTTP/1%.1 400 "), text)
    end
    -- a request with blanks in odd places is still fine, and so is one with many headers
    assert.truthy(post("/hooks/cloudflare", "cf-webhook-auth:\t" .. SECRET .. "\r\nX-Pad:   \r\n")
      :match("^HTTP/1%.1 202 "))
    for n = 23, 27 do -- around the 64 strings of the first growth: 4 + 2 per header
      local extra = {}
      for i = 1, n do extra[i] = ("X-H%d: v%d\r\n"):format(i, i) end
      local text = post("/hooks/cloudflare?flag", "cf-webhook-auth: " .. SECRET .. "\r\n" .. table.concat(extra))
      assert.truthy(text:match("^HTTP/1%.1 202 "), n .. ": " .. text)
    end
  end)

  it("refuses them in the admin bearer token", function()
    local text = exchange(srv.admin, ("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" ..
      "Authorization: Bearer %s\0junk\r\nConnection: close\r\n\r\n"):format(TOKEN))
    assert.truthy(text:match("^HTTP/1%.1 400 "), text)
    text = exchange(srv.admin, ("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" ..
      "Authorization: Bearer %s\r\nConnection: close\r\n\r\n"):format(TOKEN))
    assert.truthy(text:match("^HTTP/1%.1 200 "), text)
  end)
end)

-- regress/13-8: authenticated input broke handlers and monitoring
describe("hostile values in authenticated payloads", function()
  local srv
  local RECORD = [[
local certhook = require "certhook"
return { ["*"] = function(e)
  local f = assert(io.open("seen.jsonl", "a"))
  f:write(certhook.json.encode { event = e, raw = e.raw, hostname = e.hostname or "(nil)" }, "\n")
  f:close()
end }]]
  setup(function()
    srv = Server.start { config = SOURCES .. "delivery = { max_attempts = 1 }\n", handlers = { ["record.lua"] = RECORD } }
  end)
  teardown(function() srv:cleanup() end)

  -- The body of a fresh SSL for SaaS event, with text replaced (raw JSON: 1e309 has no
  -- encoding in cjson).
  local function body_with(pairs_)
    local body, id = event()
    for _, p in ipairs(pairs_) do
      local n
      body, n = body:gsub(p[1], function() return p[2] end)
      assert(n > 0, p[1])
    end
    return body, id
  end

  local function seen(id)
    return fs.wait_for(function()
      for line in (fs.read(srv.dir .. "/seen.jsonl") or ""):gmatch("[^\n]+") do
        local ok, t = pcall(cjson.decode, line) -- the last line may be half written yet
        if ok and t.event.id == id then return t end
      end
    end, 5)
  end

  local function metrics()
    return http.get(srv.admin, "/metrics").body
  end

  local function promtool_ok(text)
    local dir = fs.tmpdir()
    fs.write(dir .. "/in", text)
    local out, err, code = fs.run("unset LD_PRELOAD; promtool check metrics < '" .. dir .. "/in'")
    fs.rm(dir)
    return code == 0, out .. err
  end

  it("turns numbers too large for a double into absent values; handlers can encode the event", function()
    local body, id = body_with {
      { '"created_at": "[^"]*"', '"created_at": 1e309' },
      { '"key1": "value1"', '"key1": -1e999, "list": [1, 1e400, 2]' },
    }
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    local t = assert(seen(id), "the handler failed:\n" .. srv:log_text())
    assert.is_nil(t.event.occurred_at)
    assert.is_nil(t.raw.metadata.event.created_at)
    assert.is_nil(t.raw.data.custom_metadata.key1)
    assert.are.same({ 1, cjson.null, 2 }, t.raw.data.custom_metadata.list)
    assert.is_nil(srv:log_text():match('"handler failed"'))
  end)

  it("keeps hostnames that are too long or not hostnames out of the event, the inventory and /metrics", function()
    local huge = ("a"):rep(500 * 1024) .. ".example"
    for _, bad in ipairs { huge, "bad\255host.example", "a b.example", "x\"y.example", "-", "a..b" .. (".b"):rep(130) } do
      local body, id = body_with { { '"hostname": "blog.com"', ('"hostname": %q'):format(bad) } }
      local r = srv:post("/hooks/cloudflare", body, CF)
      assert.are.equal(202, r.status, r.body)
      local t = assert(seen(id))
      assert.are.equal("(nil)", t.hostname)
      assert.are.equal(bad, t.raw.data.hostname)
    end
    local text = metrics()
    assert.is_true(#text < 100000, #text)
    assert.falsy(text:find("aaaaaaaaaa", 1, true))
    -- a long name within 253 bytes, and an internationalized one, are kept
    for _, good in ipairs { ("x"):rep(60) .. "." .. ("y"):rep(60) .. ".example", "bücher.example", "*.wild_card.example" } do
      local body, id = body_with { { '"hostname": "blog.com"', ('"hostname": %q'):format(good) } }
      assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
      assert.are.equal(good, assert(seen(id)).hostname)
      assert.truthy(metrics():find('hostname="' .. good .. '"', 1, true), good)
    end
  end)

  it("escapes label values so that /metrics always parses", function()
    local body = body_with { { '"status": "pending_validation"', '"status": "pend\\"ing\\\\\\n\255\192"' } }
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(fs.wait_for(function() return metrics():find('status="pend\\"ing', 1, true) end, 5), metrics())
    local ok, out = promtool_ok(metrics())
    assert(ok, out)
  end)

  it("refuses NUL bytes in the strings an event is journaled by", function()
    for _, edit in ipairs { { '"id": "e2e%-', '"id": "nul\\u0000e2e-' },
                            { '"hostname": "blog.com"', '"hostname": "blog.com\\u0000.evil"' },
                            { '"type": "dv"', '"type": "dv", "k\\u0000ey": 1' } } do
      local r = srv:post("/hooks/cloudflare", (body_with { edit }), CF)
      assert.are.equal(400, r.status, r.body)
      assert.truthy(r.json.message:match("NUL"), r.body)
    end
  end)
end)

-- regress/13-10: IBM tokens' exp/iat were not checked: a captured callback replayed as new
-- once out of the journal's retention
describe("IBM token lifetimes", function()
  local jwt = require "helpers.jwt"
  local srv, priv, keydir
  setup(function()
    keydir = fs.tmpdir()
    local pub
    priv, pub = jwt.keypair(keydir, "ibm")
    srv = Server.start { config = ('sources = {\n  ibm = { provider = "ibm-cm", public_key = %q },\n' ..
      '  strict = { provider = "ibm-cm", public_key = %q, leeway = 0, max_age = 3600 } }\n'):format(pub, pub) }
  end)
  teardown(function()
    srv:cleanup()
    fs.rm(keydir)
  end)

  local n = 0
  local function send(source, times, header)
    local claims = cjson.decode(fs.read("tests/fixtures/ibm-cm/v4.cert_issued.json"))
    n = n + 1
    claims.nonce = ("%d-%d-%d"):format(os.time(), math.random(1e9), n)
    for k, v in pairs(times) do claims[k] = os.time() + v end
    return srv:post("/hooks/" .. source, jwt.body(jwt.rs256(cjson.encode(claims), priv, header)))
  end

  it("refuses a token past exp, before nbf or issued in the future, beyond the leeway", function()
    assert.are.equal(202, send("ibm", {}).status) -- real IBM payloads may carry none
    assert.are.equal(202, send("ibm", { exp = 600, iat = -10, nbf = -10 }).status)
    assert.are.equal(202, send("ibm", { exp = -200 }).status) -- within the default 300 s
    for _, times in ipairs { { exp = -400 }, { nbf = 400 }, { iat = 400 } } do
      local r = send("ibm", times)
      assert.are.equal(401, r.status, cjson.encode(times))
      assert.truthy(r.json.message:match("leeway"), r.body)
    end
    local r = send("ibm", { exp = -400 })
    assert.truthy(r.json.message:match("expired"), r.body)
  end)

  it("takes sources.<name>.leeway and max_age", function()
    assert.are.equal(401, send("strict", { exp = -5 }).status)
    assert.are.equal(202, send("strict", { iat = -60 }).status)
    local r = send("strict", { iat = -7200 })
    assert.are.equal(401, r.status)
    assert.truthy(r.json.message:match("max_age"), r.body)
  end)

  it("refuses an alg that only starts with RS256", function()
    local r = send("ibm", {}, '{"alg":"RS256\\u0000x"}')
    assert.are.equal(401, r.status, r.body)
  end)
end)

-- regress/13-10: a token-less loopback admin answered any Host and took a cross-origin
-- POST /reload (DNS rebinding: a web page the operator opens can reach 127.0.0.1)
describe("admin Host and Origin", function()
  local function admin(port, method, path, headers)
    local text = exchange(port, ("%s %s HTTP/1.1\r\n%sConnection: close\r\n\r\n"):format(method, path, headers))
    return tonumber(text:match("^HTTP/1%.1 (%d+)")), text
  end

  it("answers only loopback Host names without admin_token, and refuses cross-origin POSTs", function()
    local srv = Server.start { config = SOURCES }
    local p = srv.admin
    for _, host in ipairs { "evil.example", "evil.example:" .. p, "127.0.0.1.evil.example", "localhostx", "10.0.0.1" } do
      local status, text = admin(p, "GET", "/metrics", "Host: " .. host .. "\r\n")
      assert.are.equal(403, status, host)
      assert.truthy(text:match('"error":"forbidden"'), text)
    end
    for _, host in ipairs { "localhost", "localhost:" .. p, "127.0.0.1", "127.1.2.3:" .. p, "[::1]", "[::1]:" .. p, "LocalHost" } do
      assert.are.equal(200, (admin(p, "GET", "/metrics", "Host: " .. host .. "\r\n")), host)
    end
    local host = "Host: 127.0.0.1:" .. p .. "\r\n"
    for _, h in ipairs { "Origin: http://evil.example\r\n", "Origin: null\r\n",
                         "Origin: http://localhost.evil.example\r\n", "Sec-Fetch-Site: cross-site\r\n" } do
      local status, text = admin(p, "POST", "/reload", host .. h)
      assert.are.equal(403, status, h)
      assert.truthy(text:match('"error":"forbidden"'), text)
    end
    assert.are.equal(200, (admin(p, "POST", "/reload", host .. "Origin: http://127.0.0.1:" .. p .. "\r\n")))
    assert.are.equal(200, (admin(p, "POST", "/reload", host .. "Origin: http://localhost\r\nSec-Fetch-Site: same-origin\r\n")))
    assert.are.equal(200, (admin(p, "POST", "/reload", host)))
    srv:cleanup()
  end)

  it("answers any Host with admin_token, but still refuses cross-origin POSTs", function()
    local token = "admin-token-host-0123456789"
    local srv = Server.start { config = SOURCES .. ('admin_token = %q\n'):format(token) }
    local auth = "Authorization: Bearer " .. token .. "\r\n"
    assert.are.equal(200, (admin(srv.admin, "GET", "/metrics", "Host: certhook.internal.example\r\n" .. auth)))
    assert.are.equal(403, (admin(srv.admin, "POST", "/reload", "Host: certhook.internal.example\r\n" .. auth ..
      "Origin: https://evil.example\r\n")))
    srv:cleanup()
  end)
end)

-- regress/13-9: GnuTLS NORMAL offered static-RSA and CBC-SHA1 suites; nothing was configurable
describe("TLS suites", function()
  local dir, cert, key
  setup(function()
    dir = fs.tmpdir()
    cert, key = dir .. "/tls.crt", dir .. "/tls.key"
    local _, err, code = fs.run(("unset LD_PRELOAD; openssl req -x509 -newkey rsa:2048 -nodes -keyout '%s' " ..
      "-out '%s' -days 2 -subj /CN=certhook -addext subjectAltName=IP:127.0.0.1"):format(key, cert))
    assert(code == 0, err)
  end)
  teardown(function() fs.rm(dir) end)

  -- Whether a TLS 1.2 handshake with this OpenSSL cipher list (or TLS 1.3 suite) succeeds.
  local function handshake(port, args)
    local out = fs.run(("unset LD_PRELOAD; openssl s_client -connect 127.0.0.1:%d %s </dev/null 2>&1"):format(port, args))
    return out:match("Cipher is ([%w%-_]+)") ~= nil and not out:match("Cipher is %(NONE%)"), out
  end

  local function start(tls)
    return Server.start { config = SOURCES .. ('tls = { cert = %q, key = %q%s }\n'):format(cert, key, tls or "") }
  end

  it("offers by default what Mozilla's intermediate profile does: ECDHE with AEAD, TLS 1.2 and 1.3", function()
    local srv = start()
    for _, refused in ipairs { "AES128-SHA", "AES256-SHA", "AES128-GCM-SHA256", "AES256-GCM-SHA384",
                               "AES128-SHA256", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA",
                               "ECDHE-RSA-AES128-SHA256", "DES-CBC3-SHA" } do
      local ok, out = handshake(srv.port, "-tls1_2 -cipher '" .. refused .. "@SECLEVEL=0'")
      assert.is_false(ok, refused .. ":\n" .. out)
    end
    for _, offered in ipairs { "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305" } do
      local ok, out = handshake(srv.port, "-tls1_2 -cipher " .. offered)
      assert.is_true(ok, offered .. ":\n" .. out)
    end
    assert.is_true((handshake(srv.port, "-tls1_3")))
    srv:cleanup()
  end)

  it("takes tls.min_version = \"1.3\" and a GnuTLS priority string in tls.ciphers", function()
    local srv = start(', min_version = "1.3"')
    assert.is_false((handshake(srv.port, "-tls1_2")))
    assert.is_true((handshake(srv.port, "-tls1_3")))
    srv:cleanup()
    srv = start(', ciphers = "NORMAL:-CIPHER-ALL:+AES-256-GCM:-MAC-ALL:+AEAD"')
    assert.is_true((handshake(srv.port, "-tls1_2 -cipher ECDHE-RSA-AES256-GCM-SHA384")))
    assert.is_false((handshake(srv.port, "-tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256")))
    srv:cleanup()
  end)

  it("stops serve naming the setting for a priority string GnuTLS refuses, or a wrong version", function()
    for _, case in ipairs { { ', ciphers = "NORMAL:+NO-SUCH-THING"', "tls%.ciphers" },
                            { ', min_version = "1.1"', "tls%.min_version must be" },
                            { ', ciphres = "NORMAL"', "tls%.ciphres is not a setting" } } do
      local home = fs.tmpdir()
      fs.write(home .. "/certhook.conf.lua", 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n' .. SOURCES ..
        ('tls = { cert = %q, key = %q%s }\n'):format(cert, key, case[1]))
      os.execute("mkdir -p '" .. home .. "/handlers'")
      local _, err, code = fs.run(("cd '%s' && timeout 20 %s serve --config certhook.conf.lua"):format(home, Server.certhook))
      fs.rm(home)
      assert.are.equal(1, code, case[1])
      assert.truthy(err:match(case[2]), case[1] .. ": " .. err)
    end
  end)
end)
