-- The certificate inventory (DESIGN §6): updated with each event in the transaction that
-- journals it; events carry previous, stale (out of order) and repeats; certhook.certs and
-- `certhook certs` read it.
local cjson = require "cjson"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local CONFIG = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'

-- Records what each event carries about its certificate, and what certhook.certs says.
local HANDLER = [[
local certhook = require "certhook"
return { ["certificate.*"] = function(e)
  local out = { id = e.id, type = e.type, stale = e.stale, repeats = e.repeats,
    previous = e.previous, entry = certhook.certs.get(e.hostname),
    expiring = #certhook.certs.list { expiring_within = 30 * 86400 } }
  local f = assert(io.open("seen.jsonl", "a")) f:write(certhook.json.encode(out), "\n") f:close()
end }
]]

local function seen(srv, id)
  for l in (fs.read(srv.dir .. "/seen.jsonl") or ""):gmatch("[^\n]+") do
    local ok, r = pcall(cjson.decode, l)
    if ok and r.id == id then return r end
  end
end

-- Posts a Cloudflare event and waits until the handler has seen it.
local function post(srv, kind, opts)
  local body, id = events.cloudflare(kind, opts)
  local r = srv:post("/hooks/cloudflare", body, CF)
  assert.are.equal(202, r.status, r.body)
  return assert(fs.wait_for(function() return seen(srv, id) end, 10), "not delivered: " .. id)
end

describe("the certificate inventory", function()
  local srv
  setup(function() srv = Server.start { config = CONFIG, handlers = { ["inv.lua"] = HANDLER } } end)
  teardown(function() srv:cleanup() end)

  it("counts repeats of one type, and a different type starts again", function()
    local host = "dcv.example"
    for n = 1, 5 do
      local e = post(srv, "validation.failed", { hostname = host })
      assert.are.equal(n, e.repeats)
      assert.is_false(e.stale)
      if n > 1 then assert.are.equal("certificate.validation.failed", e.previous.last_type) end
    end
    local out = fs.run(("%s certs --data '%s'"):format(Server.certhook, srv.data))
    assert.truthy(out:match("\ndcv%.example [^\n]* validation%.failed x5  +%d+m\n"), out) -- a count, not "x5.0"; an age, not "-0m"
    local ok = post(srv, "validation.succeeded", { hostname = host })
    assert.are.equal(1, ok.repeats)
    assert.are.equal(5, ok.previous.repeats)
    assert.are.equal(1, post(srv, "validation.failed", { hostname = host }).repeats)
  end)

  it("marks an event older than the last one applied as stale, and keeps the newer state", function()
    local host = "order.example"
    local newer = post(srv, "issuance.succeeded", { hostname = host, created_at = "2024-05-02T10:00:00Z" })
    assert.is_false(newer.stale)
    assert.is_nil(newer.previous)
    local older = post(srv, "validation.failed", { hostname = host, created_at = "2024-05-02T09:00:00Z" })
    assert.is_true(older.stale)
    assert.are.equal("certificate.issuance.succeeded", older.previous.last_type)
    assert.are.equal("certificate.issuance.succeeded", older.entry.last_type) -- not moved back
    assert.are.equal(newer.entry.status, older.entry.status)
    local later = post(srv, "deployment.succeeded", { hostname = host, created_at = "2024-05-02T11:00:00Z" })
    assert.is_false(later.stale)
    assert.are.equal("certificate.deployment.succeeded", later.entry.last_type)
    assert.are.equal("cloudflare:cert-" .. host, later.entry.key)
    assert.are.equal("cert-" .. host, later.entry.certificate_id)
  end)

  it("lists what expires soon: certhook.certs.list and certhook certs --expiring", function()
    local e = post(srv, "renewal.upcoming_certificate_expiration_notification", { hostname = "soon.example" })
    assert.are.equal(1669032000, e.entry.expires_at)
    assert.is_true(e.expiring >= 1)
    local out, err, code = fs.run(("%s certs --expiring 30 --data '%s'"):format(Server.certhook, srv.data))
    assert.are.equal(0, code, err)
    assert.truthy(out:match("HOSTNAME%s+PROVIDER%s+STATUS%s+EXPIRES IN"))
    assert.truthy(out:match("soon%.example%s+cloudflare%s+active%s+%-%d+d"), out)
    assert.falsy(out:match("dcv%.example"), "a certificate with no known expiry is not expiring")
    out = fs.run(("%s certs --json --data '%s'"):format(Server.certhook, srv.data))
    local keys = {}
    for l in out:gmatch("[^\n]+") do keys[cjson.decode(l).key] = true end
    assert.is_true(keys["cloudflare:cert-dcv.example"] and keys["cloudflare:cert-soon.example"])
    local _, _, bad = fs.run(("%s certs --expiring soon --data '%s'"):format(Server.certhook, srv.data))
    assert.are.equal(2, bad)
  end)

  it("keeps a deleted certificate as deleted, out of the list", function()
    post(srv, "deletion.succeeded", { hostname = "soon.example" })
    local out = fs.run(("%s certs --data '%s'"):format(Server.certhook, srv.data))
    assert.falsy(out:match("soon%.example"))
    out = fs.run(("%s certs --status deleted --data '%s'"):format(Server.certhook, srv.data))
    assert.truthy(out:match("soon%.example%s+cloudflare%s+deleted"), out)
  end)
end)
