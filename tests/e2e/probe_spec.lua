-- certhook.tls.probe from handlers under serve (DESIGN §7): the certificate a local TLS server
-- (made here with openssl) serves, verified or not, and a probe that never gets an answer
-- times out without holding up other events.
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"
local Sink = require "helpers.sink"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'

-- Probes what event.metadata says and appends the outcome to results.jsonl.
local HANDLER = [[
local certhook = require "certhook"
local json, time = certhook.json, certhook.time
return {
  ["*"] = function(e)
    local m = e.metadata or {}
    local out = { id = e.id }
    if m.port then
      local t0 = time.now()
      local r, err, code = certhook.tls.probe(m.host, { port = tonumber(m.port), sni = m.sni,
        ca_file = m.ca_file, timeout = tonumber(m.timeout) })
      out.elapsed, out.probe, out.err, out.code = time.now() - t0, r, err, code
    end
    out.done_at = time.now()
    local f = assert(io.open("results.jsonl", "a")) f:write(json.encode(out), "\n") f:close()
  end,
}
]]

local function results(srv)
  local out = {}
  for line in (fs.read(srv.dir .. "/results.jsonl") or ""):gmatch("[^\n]+") do
    local r = cjson.decode(line)
    out[r.id] = r
  end
  return out
end

local function post(srv, meta)
  local body, id = events.cloudflare("deployment.succeeded", { meta = meta })
  local r = srv:post("/hooks/cloudflare", body, CF)
  assert.are.equal(202, r.status, r.body)
  return id
end

local function result(srv, id, seconds)
  return fs.wait_for(function() return results(srv)[id] end, seconds or 10)
end

-- What openssl says of a certificate file: not_after (epoch), serial (lower-case hex).
local function openssl_facts(cert)
  local out = assert(fs.run(("openssl x509 -in '%s' -noout -enddate -serial"):format(cert)))
  local enddate = out:match("notAfter=([^\n]+)")
  local epoch = assert(fs.run(("date -u -d '%s' +%%s"):format(enddate)))
  return tonumber(epoch), out:match("serial=(%x+)"):lower()
end

describe("certhook.tls.probe in handlers", function()
  local srv, tls, dir, cert
  setup(function()
    dir = fs.tmpdir()
    local key
    cert, key = Sink.self_signed(dir)
    tls = Sink.start { tls = { cert, key } }
    srv = Server.start { config = SOURCES .. "delivery = { max_attempts = 1 }\n", handlers = { ["probe.lua"] = HANDLER } }
  end)
  teardown(function()
    srv:cleanup()
    tls:stop()
    fs.rm(dir)
  end)

  it("returns the served certificate's facts, verified against its CA", function()
    local not_after, serial = openssl_facts(cert)
    local r = assert(result(srv, post(srv, { host = "127.0.0.1", port = tls.port, ca_file = cert })))
    local p = assert(r.probe, r.err)
    assert.are.equal(not_after, p.not_after)
    assert.are.equal(serial:gsub("^0+", ""), p.serial_number:gsub("^0+", ""))
    assert.is_true(p.verified, p.verify_error)
    assert.is_nil(p.verify_error)
    assert.are.equal("CN=127.0.0.1", p.subject)
    assert.are.equal(64, #p.fingerprint_sha256)
    assert.truthy(p.protocol:match("^TLSv1%.[23]$"), p.protocol)
    assert.is_true(p.not_before < p.not_after)
  end)

  it("reports an untrusted certificate as verified = false, with the reason", function()
    local r = assert(result(srv, post(srv, { host = "127.0.0.1", port = tls.port })))
    local p = assert(r.probe, r.err)
    assert.is_false(p.verified)
    assert.truthy(p.verify_error:match("self%-signed"), p.verify_error)
  end)

  it("checks the name: the certificate is for 127.0.0.1, not for the SNI name asked", function()
    local r = assert(result(srv, post(srv, { host = "127.0.0.1", port = tls.port, sni = "other.example",
      ca_file = cert })))
    local p = assert(r.probe, r.err)
    assert.is_false(p.verified)
    assert.truthy(p.verify_error:match("not valid for the host name"), p.verify_error)
    assert.are.equal("other.example", p.sni)
  end)

  it("times out on a server that never answers, while other events flow", function()
    local silent = assert(socket.bind("127.0.0.1", 0)) -- listens, never accepts or speaks
    local _, port = silent:getsockname()
    local stuck = post(srv, { host = "127.0.0.1", port = port, timeout = 2 })
    local quick = post(srv, {})
    local q = assert(result(srv, quick, 5))
    local r = assert(result(srv, stuck, 10))
    silent:close()
    assert.are.equal("timeout", r.code, r.err)
    assert.is_true(r.elapsed >= 1.5 and r.elapsed < 5, "elapsed " .. r.elapsed)
    assert.is_true(q.done_at < r.done_at, "the other event waited for the probe")
  end)

  it("refuses a connection nobody listens to, and misuse raises", function()
    local closed = assert(socket.bind("127.0.0.1", 0))
    local _, port = closed:getsockname()
    closed:close()
    local r = assert(result(srv, post(srv, { host = "127.0.0.1", port = port })))
    assert.are.equal("connrefused", r.code, r.err)
    local certhook = require "certhook"
    assert.has_error(function() certhook.tls.probe("a/b") end)
    assert.has_error(function() certhook.tls.probe("example.com", { port = 70000 }) end)
    assert.has_error(function() certhook.tls.probe("example.com", { timeout = -1 }) end)
  end)
end)
