-- The expiry watchdog (DESIGN §6): events of the provider certhook, journaled and delivered,
-- each exactly once through restarts: an upcoming expiry nobody warned of, the renewal overdue
-- when the next threshold passes without one, the expiry reached with no newer certificate.
-- Short thresholds stand in for days: a certificate "expiring in 3 days" meets a threshold of
-- 3 days + 60 s at once and one of 3 days - 4 s four seconds later.
local cjson = require "cjson"
local events = require "helpers.events"
local fs = require "helpers.fs"
local http = require "helpers.http"
local Server = require "helpers.server"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local DAY = 86400
local T1, T2 = (3 * DAY + 60) / DAY, (3 * DAY - 4) / DAY
local CONFIG = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" },\n' ..
  '  kv = { provider = "azure-keyvault", secret = "s3cret" } }\n' ..
  ("watchdog = { interval = 0.2, before = { %.10f, %.10f } }\n"):format(T1, T2)

local HANDLER = [[
local json = require("certhook").json
return { ["certificate.*"] = function(e)
  if e.provider ~= "certhook" then return end
  local f = assert(io.open("watchdog.jsonl", "a"))
  f:write(json.encode { id = e.id, type = e.type, hostname = e.hostname, source = e.source,
    threshold_days = e.threshold_days, days_to_expiry = e.days_to_expiry,
    key = e.certificate and e.certificate.key, expires_at = e.certificate and e.certificate.expires_at,
    status = e.certificate and e.certificate.status, state = e.certificate and e.certificate.state }, "\n")
  f:close()
end }
]]

-- What the watchdog raised: all, or of the hostname (or the certificate key) host.
local function fired(srv, host)
  local out = {}
  for l in (fs.read(srv.dir .. "/watchdog.jsonl") or ""):gmatch("[^\n]+") do
    local ok, r = pcall(cjson.decode, l)
    if ok and (host == nil or r.hostname == host or r.key == host) then out[#out + 1] = r end
  end
  return out
end

local function types(list)
  local t = {}
  for _, r in ipairs(list) do t[#t + 1] = r.type end
  return table.concat(t, ",")
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

local function post(srv, kind, host, expires_at, cert_id)
  local body = events.cloudflare(kind, { hostname = host, cert_id = cert_id,
    expires_on = expires_at and iso(expires_at), created_at = iso(os.time()) })
  assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
end

-- An Azure Key Vault event of the certificate name (Event Grid schema) with its expiry; the
-- key of its inventory entry.
local function post_kv(srv, kind, name, expires_at)
  local e = cjson.decode((assert(fs.read("tests/fixtures/azure-keyvault/eventgrid.Microsoft.KeyVault." ..
    kind .. ".json"))))[1]
  local uri = "https://certhook-kv.vault.azure.net/certificates/" .. name
  e.id, e.eventTime, e.subject = ("%s-%d"):format(name, math.random(1e9)), iso(os.time()), name
  e.data.Id, e.data.ObjectName, e.data.EXP = uri .. "/" .. e.data.Version, name, expires_at
  assert.are.equal(202, srv:post("/hooks/kv", cjson.encode { e }, { ["x-api-key"] = "s3cret" }).status)
  return "azure-keyvault:" .. uri
end

describe("the expiry watchdog", function()
  local srv
  setup(function() srv = Server.start { config = CONFIG, handlers = { ["wd.lua"] = HANDLER } } end)
  teardown(function() srv:cleanup() end)

  it("warns of an expiry, then says the renewal is overdue, each once through a restart", function()
    post(srv, "deployment.succeeded", "soon.example", os.time() + 3 * DAY)
    local up = assert(fs.wait_for(function() return fired(srv, "soon.example")[1] end, 5), "no warning")
    assert.are.equal("certificate.expiration.upcoming", up.type)
    assert.are.equal("watchdog", up.source)
    assert.are.equal("cloudflare:cert-soon.example", up.key)
    assert.is_true(math.abs(up.threshold_days - T1) < 1e-3, tostring(up.threshold_days))
    assert.are.equal(2, up.days_to_expiry)
    assert.are.equal("active", up.state) -- the entry's
    assert(fs.wait_for(function() return #fired(srv, "soon.example") >= 2 end, 10), "no escalation")
    assert.are.equal(0, srv:stop())
    srv:launch()
    os.execute("sleep 2")
    local all = fired(srv, "soon.example")
    assert.are.equal("certificate.expiration.upcoming,certificate.renewal.overdue", types(all))
    assert.truthy(all[2].id:match("^watchdog:cloudflare:cert%-soon%.example:%d+:overdue$"), all[2].id)
    local out = fs.run(("%s certs --json --data '%s'"):format(Server.certhook, srv.data))
    local entry
    for l in out:gmatch("[^\n]+") do
      local e = cjson.decode(l)
      if e.hostname == "soon.example" then entry = e end
    end
    assert(entry, "soon.example is not in certhook certs:\n" .. out)
    assert.are.equal("certificate.renewal.overdue", entry.last_type)
  end)

  it("warns once when several thresholds passed at once, and a renewal stops the escalation", function()
    post(srv, "deployment.succeeded", "late.example", os.time() + 3 * DAY - 30) -- past both
    assert(fs.wait_for(function() return fired(srv, "late.example")[1] end, 5), "no warning")
    post(srv, "deployment.succeeded", "renewed.example", os.time() + 3 * DAY + 30)
    assert(fs.wait_for(function() return fired(srv, "renewed.example")[1] end, 5), "no warning")
    post(srv, "renewal.succeeded", "renewed.example") -- renewed: no overdue at the next threshold
    os.execute("sleep 3")
    assert.are.equal("certificate.expiration.upcoming", types(fired(srv, "late.example")))
    local first = fired(srv, "late.example")[1]
    assert.is_true(math.abs(first.threshold_days - T2) < 1e-3, "the nearest threshold")
    assert.are.equal("certificate.expiration.upcoming", types(fired(srv, "renewed.example")))
  end)

  it("says an expiry was reached, unless a newer certificate of the hostname expires later", function()
    post(srv, "deployment.succeeded", "gone.example", os.time() + 1)
    post(srv, "deployment.succeeded", "replaced.example", os.time() + 1, "old-cert")
    post(srv, "issuance.succeeded", "replaced.example", os.time() + 90 * DAY, "new-cert")
    assert(fs.wait_for(function()
      return types(fired(srv, "gone.example")):match("certificate%.expiration%.reached")
    end, 10), "no expiry: " .. types(fired(srv, "gone.example")))
    local gone = fired(srv, "gone.example")
    assert.are.same({ "active", "expired" }, { gone[#gone].status, gone[#gone].state }) -- whatever the status
    os.execute("sleep 1")
    assert.falsy(types(fired(srv, "replaced.example")):match("reached"))
  end)

  it("leaves an expiry a provider said was reached to the provider: one page, not two", function()
    local kv = post_kv(srv, "CertificateExpired", "expired-" .. math.random(1e6), os.time() - 5)
    post(srv, "deployment.succeeded", "lapsed.example", os.time() - 5) -- nobody said it: the watchdog does
    assert(fs.wait_for(function()
      return types(fired(srv, "lapsed.example")):match("certificate%.expiration%.reached")
    end, 10), "no expiry: " .. types(fired(srv, "lapsed.example")))
    os.execute("sleep 1")
    assert.are.equal("", types(fired(srv, kv)))
  end)

  it("keeps a certificate's series labelled with its provider after a watchdog event", function()
    post(srv, "deployment.succeeded", "labels.example", os.time() + 3 * DAY)
    assert(fs.wait_for(function() return fired(srv, "labels.example")[1] end, 5), "no warning")
    local text = http.get(srv.admin, "/metrics").body
    local series = {}
    for line in text:gmatch("certhook_certificate_status{[^\n]*") do
      if line:find('certificate="cloudflare:cert-labels.example"', 1, true) then series[#series + 1] = line end
    end
    assert.are.equal(1, #series, text)
    assert.truthy(series[1]:find('provider="cloudflare"', 1, true), series[1])
    assert.truthy(series[1]:find('type="certificate.expiration.upcoming"', 1, true), series[1])
  end)

  it("is off with watchdog = false, and refuses settings it does not know", function()
    local off = Server.start { config = CONFIG .. "watchdog = false\n", handlers = { ["wd.lua"] = HANDLER } }
    post(off, "deployment.succeeded", "quiet.example", os.time() + 3 * DAY)
    os.execute("sleep 2")
    assert.are.equal(0, #fired(off))
    off:cleanup()
    local dir = fs.tmpdir()
    fs.write(dir .. "/c.lua", CONFIG .. "watchdog = { intervall = 1 }\n")
    os.execute(("chmod 600 '%s/c.lua'"):format(dir))
    local out, err, code = fs.run(("%s serve --config %s/c.lua --data %s/data --handlers %s"):format(
      Server.certhook, dir, dir, dir))
    assert.are.equal(1, code, out)
    assert.truthy(err:match("watchdog%.intervall is not a setting %(those of watchdog are interval, before%)"), err)
    fs.write(dir .. "/c.lua", CONFIG .. "watchdog = { before = { 0 } }\n")
    _, err, code = fs.run(("%s serve --config %s/c.lua --data %s/data --handlers %s"):format(
      Server.certhook, dir, dir, dir))
    assert.are.equal(1, code)
    assert.truthy(err:match("watchdog%.before%[1%] must be a number of days"), err)
    fs.rm(dir)
  end)
end)
