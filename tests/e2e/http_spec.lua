-- certhook.http from handlers under serve (DESIGN §5), against a loopback sink: JSON round
-- trip, headers, error codes, timeouts, 5xx as responses, TLS verification, many handlers
-- waiting at once; and the limits (delivery.timeout, memory_limit, per_host) that stop one
-- handler without hurting the others.
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"
local Sink = require "helpers.sink"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'

-- Does the HTTP call described by event.metadata (custom_metadata) and appends what came back
-- to results.jsonl; metadata.case picks a misbehaviour instead.
local PROBE = [[
local certhook = require "certhook"
local http, json, time = certhook.http, certhook.json, certhook.time
local function record(t)
  local f = assert(io.open("results.jsonl", "a")) f:write(json.encode(t), "\n") f:close()
end
return {
  ["*"] = function(e)
    local m = e.metadata or {}
    if m.case == "busy" then while true do end end
    if m.case == "busy_pcall" then while true do pcall(function() while true do end end) end end
    if m.case == "hog" then local t = {} while true do t[#t + 1] = string.rep("x", 1 << 20) .. #t end end
    if m.case == "hog_pcall" then
      while true do pcall(function() local t = {} while true do t[#t + 1] = string.rep("x", 1 << 20) .. #t end end) end
    end
    if not m.url then record { id = e.id } return end
    local t0 = time.now()
    local resp, err, code = http.request { url = m.url, method = m.method, json = m.json, body = m.body,
      headers = m.headers, timeout = m.timeout, ca_file = m.ca_file, max_size = m.max_size }
    local out = { id = e.id, elapsed = time.now() - t0 }
    if resp then
      out.status, out.json, out.body, out.sink = resp.status, resp.json, #resp.body, resp.headers["x-sink"]
    else
      out.err, out.code = err, code
    end
    record(out)
    if m.fail then error("asked to fail") end
  end,
}
]]

-- A Cloudflare event whose custom_metadata is meta (a table), with a fresh id.
local function event(meta)
  return events.cloudflare("issuance.succeeded", { meta = meta })
end

local function results(srv)
  local out = {}
  for line in (fs.read(srv.dir .. "/results.jsonl") or ""):gmatch("[^\n]+") do
    local r = cjson.decode(line)
    out[r.id] = r
  end
  return out
end

local function result(srv, id, seconds)
  return fs.wait_for(function() return results(srv)[id] end, seconds or 10)
end

local function post(srv, meta)
  local body, id = event(meta)
  local r = srv:post("/hooks/cloudflare", body, CF)
  assert.are.equal(202, r.status, r.body)
  return id
end

describe("certhook.http in handlers", function()
  local srv, sink, tls, dir, cert
  setup(function()
    dir = fs.tmpdir()
    local key
    cert, key = Sink.self_signed(dir)
    sink = Sink.start()
    tls = Sink.start { tls = { cert, key } }
    srv = Server.start { config = SOURCES .. "delivery = { max_attempts = 1 }\n", handlers = { ["probe.lua"] = PROBE } }
  end)
  teardown(function()
    srv:cleanup()
    sink:stop()
    tls:stop()
    fs.rm(dir)
  end)

  it("sends JSON and headers, and decodes a JSON reply", function()
    local id = post(srv, { url = sink.url .. "/api/hosts?x=1", method = "PUT",
      json = { hostname = "a.example", list = { 1, 2 } }, headers = { ["X-Certhook-Test"] = "yes" } })
    local r = assert(result(srv, id))
    assert.are.equal(200, r.status, r.err)
    assert.are.equal("yes", r.sink) -- a response header
    assert.are.equal("PUT", r.json.method)
    assert.are.equal("/api/hosts", r.json.path)
    assert.are.equal("1", r.json.query.x)
    assert.are.equal("yes", r.json.headers["x-certhook-test"])
    assert.are.equal("application/json", r.json.headers["content-type"])
    assert.truthy(r.json.headers["user-agent"]:match("^certhook/"))
    assert.are.same({ hostname = "a.example", list = { 1, 2 } }, cjson.decode(r.json.body))
  end)

  it("returns a 5xx reply as a response", function()
    local r = assert(result(srv, post(srv, { url = sink.url .. "/?status=503" })))
    assert.are.equal(503, r.status)
    assert.is_nil(r.err)
  end)

  it("returns nil, message, code for transport failures", function()
    local closed = assert(socket.bind("127.0.0.1", 0))
    local _, port = closed:getsockname()
    closed:close()
    local cases = {
      { { url = ("http://127.0.0.1:%d/"):format(port) }, "connrefused" },
      { { url = "http://nonexistent.invalid/" }, "resolve" },
      { { url = sink.url .. "/?delay=3000", timeout = 0.3 }, "timeout" },
      { { url = sink.url .. "/?size=100000", max_size = 1000 }, "toolarge" },
      { { url = "ftp://127.0.0.1/" }, "url" },
    }
    local ids = {}
    for i, c in ipairs(cases) do ids[i] = post(srv, c[1]) end
    for i, c in ipairs(cases) do
      local r = assert(result(srv, ids[i]))
      assert.are.equal(c[2], r.code, r.err)
      assert.is_string(r.err)
    end
    assert.is_true(results(srv)[ids[3]].elapsed < 2, "the request timeout was not applied")
  end)

  it("verifies TLS peers: a self-signed server is refused unless its CA is given", function()
    local refused = post(srv, { url = tls.url .. "/" })
    local trusted = post(srv, { url = tls.url .. "/", ca_file = cert })
    local r = assert(result(srv, refused))
    assert.are.equal("tls", r.code, r.err)
    r = assert(result(srv, trusted))
    assert.are.equal(200, r.status, r.err)
    assert.are.equal("GET", r.json.method)
  end)

  it("lets many handlers wait on the network at once", function()
    local before = sink:stats().requests
    local ids = {}
    local t0 = socket.gettime()
    for i = 1, 40 do ids[i] = post(srv, { url = sink.url .. "/?delay=1000" }) end
    for _, id in ipairs(ids) do
      local r = assert(result(srv, id, 15))
      assert.are.equal(200, r.status)
    end
    local took = socket.gettime() - t0
    local stats = sink:stats()
    assert.are.equal(before + 40, stats.requests)
    assert.is_true(stats.max_in_flight >= 30, ("at most %d requests were in flight at once"):format(stats.max_in_flight))
    assert.is_true(took < 6, ("40 handlers each waiting 1 s took %.1f s"):format(took))
  end)
end)

describe("handler limits", function()
  local srv, sink
  setup(function()
    sink = Sink.start()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1, timeout = 1, memory_limit = 32 * 1024 * 1024 }\n",
      handlers = { ["probe.lua"] = PROBE },
    }
  end)
  teardown(function()
    srv:cleanup()
    sink:stop()
  end)

  local function delivery(id)
    local rows = srv:sql(("SELECT d.status, coalesce(d.last_error, '') FROM %s d JOIN events e " ..
      "ON e.seq = d.event_seq WHERE e.id = '%s'"):format(srv:deliveries(), id))
    return rows[1]
  end

  local function dead(id)
    return fs.wait_for(function()
      local row = delivery(id)
      return row and row[1] == "dead" and row
    end, 15)
  end

  for _, case in ipairs {
    { "busy", "a busy loop", "delivery.timeout" },
    { "busy_pcall", "a busy loop that pcall tries to shield", "delivery.timeout" },
    { "hog", "a memory hog", "delivery.memory_limit" },
    { "hog_pcall", "a memory hog that pcall tries to shield", "delivery.memory_limit" },
  } do
    it("stops " .. case[2] .. " and fails only its delivery", function()
      local bad = post(srv, { case = case[1] })
      local good = post(srv, {})
      local row = assert(dead(bad), "the misbehaving delivery was not stopped")
      assert.truthy(row[2]:find(case[3], 1, true), row[2])
      assert(result(srv, good), "the other event was not handled")
      assert.are.equal("done", delivery(good)[1])
      local after = post(srv, {}) -- still serving
      assert(result(srv, after))
    end)
  end

  it("stops a hung HTTP call at delivery.timeout while other handlers go on", function()
    local t0 = socket.gettime()
    local hung = post(srv, { url = sink.url .. "/?hang=1", timeout = 60 })
    socket.sleep(0.1)
    local good = post(srv, { url = sink.url .. "/?delay=50" })
    local r = assert(result(srv, good))
    assert.are.equal(200, r.status)
    assert.is_true(socket.gettime() - t0 < 1, "another handler waited for the hung one")
    local row = assert(dead(hung))
    assert.truthy(row[2]:find("delivery.timeout", 1, true), row[2])
    assert.is_true(socket.gettime() - t0 < 3)
  end)
end)

describe("delivery.per_host", function()
  it("keeps one slow host from taking every slot", function()
    local slow, fast = Sink.start(), Sink.start()
    local srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1, concurrency = 4, per_host = 2 }\n",
      handlers = { ["probe.lua"] = PROBE },
    }
    local slow_ids, fast_ids = {}, {}
    for i = 1, 6 do slow_ids[i] = post(srv, { url = slow.url .. "/?delay=1500" }) end
    socket.sleep(0.2)
    local t0 = socket.gettime()
    -- "localhost" is another host to the limit than "127.0.0.1"
    for i = 1, 4 do fast_ids[i] = post(srv, { url = ("http://localhost:%d/"):format(fast.port) }) end
    for _, id in ipairs(fast_ids) do
      local r = assert(result(srv, id, 10))
      assert.are.equal(200, r.status, r.err)
    end
    local took = socket.gettime() - t0
    assert.is_true(took < 1, ("requests to another host waited %.1f s for the slow one"):format(took))
    for _, id in ipairs(slow_ids) do assert(result(srv, id, 10)) end
    assert.is_true(slow:stats().max_in_flight <= 2, "more than per_host requests reached the slow host")
    srv:cleanup()
    slow:stop()
    fast:stop()
  end)
end)
