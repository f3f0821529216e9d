-- Providers written in Lua against a running server (DESIGN §5): examples/providers/alertmanager.lua
-- with its token, every Alertmanager fixture through `certhook send --source`, and a script that
-- raises: 202, the payload journaled as unknown with the error, counted in /metrics.
local cjson = require "cjson"
local fs = require "helpers.fs"
local http = require "helpers.http"
local Server = require "helpers.server"

local FIX = os.getenv("PWD") .. "/tests/fixtures/" -- absolute: certhook send runs in the server's directory
local AM_TOKEN = "am-token-0123456789"

local CONFIG = ([[
sources = {
  am = { provider = "lua", script = %q, secret = %q },
  broken = { provider = "lua", script = "broken.lua", insecure = true },
  echo = { provider = "lua", script = "echo.lua", secret = "echo-secret-0123" },
  ce = { provider = "lua", script = "ce.lua", insecure = true },
}
]]):format(os.getenv("PWD") .. "/examples/providers/alertmanager.lua", AM_TOKEN)

local DUMP = [[
local certhook = require "certhook"
return { ["*"] = function(e)
  local f = assert(io.open("got-" .. e.id:gsub("[^%w]", "_") .. ".json", "w"))
  f:write(certhook.json.encode(e))
  f:close()
end }]]

local BROKEN = [[return { name = "broken", normalize = function(body) error("cannot read " .. tostring(body.kind)) end }]]

-- An event that shows what the script was given of the request.
local ECHO = [[return { name = "echo", normalize = function(body, request)
  return { id = "echo:" .. body.n, type = "notification.test",
    metadata = { method = request.method, headers = request.headers, query = request.query } }
end }]]

-- A CloudEvent in binary content mode: the event id from its ce-id header, the headers shown.
local CE = [[return { name = "ce", normalize = function(body, request)
  return { id = "ce:" .. request.headers["ce-id"], type = "notification.test",
    metadata = { headers = request.headers } }
end }]]

describe("Lua providers", function()
  local srv, dir

  local function send(args)
    local out, err, code = fs.run(("cd '%s' && %s send --config client.conf.lua %s"):format(dir, Server.certhook, args))
    return out .. err, code
  end

  local function got(id, seconds)
    return fs.wait_for(function()
      local text = fs.read(dir .. "/got-" .. id:gsub("[^%w]", "_") .. ".json")
      local ok, e = pcall(cjson.decode, text or "") -- the handler may be writing it still
      return ok and e
    end, seconds or 10)
  end

  setup(function()
    dir = fs.tmpdir()
    fs.write(dir .. "/broken.lua", BROKEN)
    fs.write(dir .. "/echo.lua", ECHO)
    fs.write(dir .. "/ce.lua", CE)
    srv = Server.start { dir = dir, config = CONFIG, handlers = { ["dump.lua"] = DUMP } }
    fs.write(dir .. "/client.conf.lua", ('listen = "127.0.0.1:%d"\n'):format(srv.port) .. CONFIG)
  end)
  teardown(function() if srv then srv:cleanup() end end)

  it("examples/providers/alertmanager.lua: every fixture through the server, one event per alert", function()
    local expect = {
      ["x509-certificate-exporter.CertificateRenewal.firing.json"] = {
        "alertmanager:8e0f1a2b3c4d5e6f:2025-03-04T00:05:30Z", "alertmanager:9f1e2d3c4b5a6978:2025-03-06T12:00:30Z" },
      ["cert-manager.CertManagerCertExpirySoon.resolved.json"] = {
        "alertmanager:5d4c2a6b0f3e8d71:2025-03-11T00:12:45.123Z:resolved" },
    }
    for f in fs.run("ls " .. FIX .. "alertmanager"):gmatch("[^\n]+") do
      local out, code = send("--source am " .. FIX .. "alertmanager/" .. f)
      assert.are.equal(0, code, f .. ": " .. out)
      local reply = cjson.decode(out:match("^%d+ ([^\n]*)"))
      local ids = {}
      for _, e in ipairs(reply.events or { reply }) do ids[#ids + 1] = e.id end
      if expect[f] then assert.are.same(expect[f], ids, f) end
    end
    local e = assert(got("alertmanager:8e0f1a2b3c4d5e6f:2025-03-04T00:05:30Z"))
    assert.are.equal("alertmanager", e.provider)
    assert.are.equal("am", e.source)
    assert.are.equal("shop.example.com", e.hostname)
    assert.are.equal("certhook", e.raw.receiver)
    local r = srv:post("/hooks/am", fs.read(FIX .. "alertmanager/sample-v4.ProbeFailure.json"),
      { Authorization = "Bearer not-the-token" })
    assert.are.equal(401, r.status)
  end)

  it("one that raises: 202, the payload journaled as unknown with its error, counted", function()
    local body = '{"kind":"surprise","n":1}'
    local r = srv:post("/hooks/broken", body)
    assert.are.equal(202, r.status, r.body)
    assert.are.equal("unknown", r.json.type)
    local e = assert(got(r.json.id))
    assert.truthy(e.error:find("^broken: .*broken%.lua:1: cannot read surprise$"), e.error)
    assert.are.same({ kind = "surprise", n = 1 }, e.raw)
    assert.are.equal(body, srv:sql(("SELECT d.body FROM event_data d JOIN events e ON e.seq = d.seq WHERE e.id = '%s'")
      :format(r.json.id))[1][1])
    local metrics = http.get(srv.admin, "/metrics").body
    assert.truthy(metrics:find('certhook_provider_errors_total{source="broken",provider="broken"} 1', 1, true), metrics)
  end)

  it("shows the script the request's method, headers (names in lower case) and query, not the credentials", function()
    local r = srv:post("/hooks/echo?region=eu&x=1", '{"n":1}', { Authorization = "Bearer echo-secret-0123",
      ["X-Thing"] = "Value" })
    assert.are.equal(202, r.status, r.body)
    local e = assert(got("echo:1"))
    assert.are.equal("POST", e.metadata.method)
    assert.are.equal("Value", e.metadata.headers["x-thing"])
    assert.are.equal("application/json", e.metadata.headers["content-type"])
    assert.is_nil(e.metadata.headers.authorization)
    assert.are.same({ region = "eu", x = "1" }, e.metadata.query)
  end)

  it("shows the script a CloudEvent's ce-* headers in binary content mode, the body its data as sent", function()
    -- as the cloudevents SDK's HTTP.binary makes it (tests/fixtures/azure-keyvault/http/)
    local m = cjson.decode(fs.read(FIX .. "azure-keyvault/http/cloudevents-sdk.binary.Microsoft.KeyVault.CertificateNearExpiry.json"))
    local r = srv:request("POST", "/hooks/ce", m.headers, m.body)
    assert.are.equal(202, r.status, r.body)
    assert.are.equal("ce:" .. m.headers["ce-id"], r.json.id)
    local e = assert(got(r.json.id))
    for k, v in pairs(m.headers) do assert.are.equal(v, e.metadata.headers[k], k) end
    assert.are.equal("1.0", e.metadata.headers["ce-specversion"])
    assert.are.same(cjson.decode(m.body), e.raw)
  end)

  it("labels the received counter with the script's name", function()
    local metrics = http.get(srv.admin, "/metrics").body
    assert.truthy(metrics:find('certhook_events_received_total{source="am",provider="alertmanager"', 1, true), metrics)
  end)
end)
