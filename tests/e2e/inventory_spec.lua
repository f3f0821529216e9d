-- The certificate inventory (DESIGN §6): folded from the log in log order, after the commit the
-- 202 waits for and before the event is dispatched; events carry previous, stale (out of order)
-- and repeats; certhook.certs and `certhook certs` read it; a fold lost to a crash is made again
-- from the log at the next start.
local cjson = require "cjson"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local ACM = { ["x-api-key"] = "s3cret" }
-- (no watchdog: its events about the fixtures' long-past expiries, occurring now, would make
-- the fixtures' later events stale)
local CONFIG = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" },\n' ..
  '  acm = { provider = "aws-acm", secret = "s3cret" } }\nwatchdog = false\n'
local DAY = 86400

-- Records what each event carries about its certificate, and what certhook.certs says.
local HANDLER = [[
local certhook = require "certhook"
return { ["certificate.*"] = function(e)
  local out = { id = e.id, type = e.type, stale = e.stale, repeats = e.repeats,
    previous = e.previous, days_to_expiry = e.days_to_expiry, certificate = e.certificate,
    entry = certhook.certs.get(e.certificate and e.certificate.id or e.hostname),
    expiring = #certhook.certs.list { expiring_within = 30 * 86400 },
    state_misused = not pcall(certhook.certs.list, { state = "ISSUED" }) }
  if e.certificate and e.certificate.state then -- the keys of the entries in the same state
    out.same_state = {}
    for _, c in ipairs(certhook.certs.list { state = e.certificate.state }) do table.insert(out.same_state, c.key) end
  end
  local f = assert(io.open("seen.jsonl", "a")) f:write(certhook.json.encode(out), "\n") f:close()
end }
]]

-- What the handler recorded of the event id (or the first event match(record) is true of).
local function seen(srv, id, match)
  for l in (fs.read(srv.dir .. "/seen.jsonl") or ""):gmatch("[^\n]+") do
    local ok, r = pcall(cjson.decode, l)
    if ok and (r.id == id or (match and match(r))) then return r end
  end
end

-- Posts a Cloudflare event and waits until the handler has seen it.
local function post(srv, kind, opts)
  local body, id = events.cloudflare(kind, opts)
  local r = srv:post("/hooks/cloudflare", body, CF)
  assert.are.equal(202, r.status, r.body)
  return assert(fs.wait_for(function() return seen(srv, id) end, 10), "not delivered: " .. id)
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

-- Posts an event of source to the server (the fixture, its fields replaced by those of set:
-- "detail.DaysToExpiry" = 30...) and waits until the handler has seen it (its id, or match).
local function post_fixture(srv, source, headers, fixture, id, set, match)
  local t = cjson.decode((assert(fs.read("tests/fixtures/" .. fixture))))
  for path, v in pairs(set) do
    local at, last = t, nil
    for k in path:gmatch("[^.]+") do
      if last then at[last] = at[last] or {}; at = at[last] end
      last = k
    end
    at[last] = v
  end
  local r = srv:post("/hooks/" .. source, cjson.encode(t), headers)
  assert.are.equal(202, r.status, r.body)
  return assert(fs.wait_for(function() return seen(srv, id, match) end, 10), "not delivered")
end

-- The entry of key as `certhook certs --json` prints it (nil: not listed).
local function certs_entry(srv, key)
  local out = fs.run(("%s certs --json --data '%s'"):format(Server.certhook, srv.data))
  for l in out:gmatch("[^\n]+") do
    local e = cjson.decode(l)
    if e.key == key then return e end
  end
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
    assert.truthy(out:match("HOSTNAME%s+PROVIDER%s+STATUS%s+STATE%s+EXPIRES IN"))
    assert.truthy(out:match("soon%.example%s+cloudflare%s+active%s+active%s+%-%d+d"), out)
    assert.falsy(out:match("dcv%.example"), "a certificate with no known expiry is not expiring")
    out = fs.run(("%s certs --json --data '%s'"):format(Server.certhook, srv.data))
    local keys = {}
    for l in out:gmatch("[^\n]+") do keys[cjson.decode(l).key] = true end
    assert.is_true(keys["cloudflare:cert-dcv.example"] and keys["cloudflare:cert-soon.example"])
    local _, _, bad = fs.run(("%s certs --expiring soon --data '%s'"):format(Server.certhook, srv.data))
    assert.are.equal(2, bad)
  end)

  it("sets an expiry stated only in days from when the event occurred, marked approximate", function()
    -- Cloudflare's certificate expiration alert: days_til_expiration, no date
    local now, cert = os.time(), "4ec9c1a4-" .. math.random(1e6)
    local e = post_fixture(srv, "cloudflare", CF, "cloudflare/alert.zone_aop_custom_certificate_expiration_type.json",
      nil, { ts = now, ["data.certificate_id"] = cert, ["data.hostnames"] = "alert.example" },
      function(r) return r.certificate and r.certificate.id == cert end)
    assert.are.equal(14, e.days_to_expiry)
    assert.are.equal(now + 14 * DAY, e.certificate.expires_at)
    assert.is_true(e.certificate.expires_at_approximate)
    assert.are.equal(now + 14 * DAY, e.entry.expires_at)
    assert.is_true(e.entry.expires_at_approximate)
    local out = fs.run(("%s certs --data '%s'"):format(Server.certhook, srv.data))
    assert.truthy(out:match("alert%.example%s+cloudflare%s+%S+%s+%S+%s+~1[34]d"), out)
  end)

  it("takes a newer expiry stated in days over an older date, and a newer date over that", function()
    -- ACM: issued with an exact date; then Approaching Expiration says only DaysToExpiry
    local arn = "arn:aws:acm:us-east-1:123456789012:certificate/" .. math.random(1e9)
    local now, n = os.time(), math.random(1e9)
    local function acm(fixture, id, at, set)
      set.id, set.time, set.resources = id, iso(at), { arn }
      return post_fixture(srv, "acm", ACM, "aws-acm/" .. fixture, "aws-acm:" .. id, set)
    end
    local issued = acm("certificate-available.ISSUANCE.json", "i-" .. n, now - 3600,
      { ["detail.CertificateExpirationDate"] = iso(now + 200 * DAY) })
    assert.are.equal(now + 200 * DAY, issued.entry.expires_at)
    assert.is_nil(issued.entry.expires_at_approximate)
    local upcoming = acm("certificate-approaching-expiration.json", "u-" .. n, now,
      { ["detail.DaysToExpiry"] = 30 })
    assert.are.equal(30, upcoming.days_to_expiry)
    assert.are.equal(now + 30 * DAY, upcoming.entry.expires_at) -- newer: it wins
    assert.is_true(upcoming.entry.expires_at_approximate)
    local late = acm("certificate-approaching-expiration.json", "l-" .. n, now - 60,
      { ["detail.DaysToExpiry"] = 10 })
    assert.is_true(late.stale)
    assert.are.equal(now + 30 * DAY, late.entry.expires_at) -- older: it does not
    local renewed = acm("certificate-available.RENEWAL.json", "r-" .. n, now + 60,
      { ["detail.CertificateExpirationDate"] = iso(now + 395 * DAY) })
    assert.are.equal(now + 395 * DAY, renewed.entry.expires_at)
    assert.is_nil(renewed.entry.expires_at_approximate)
  end)

  it("gives each certificate a state that every provider shares: in events, entries, certs and its filters", function()
    local n = math.random(1e9)
    local arn = "arn:aws:acm:us-east-1:123456789012:certificate/state-" .. n
    local acm = post_fixture(srv, "acm", ACM, "aws-acm/certificate-available.ISSUANCE.json", "aws-acm:s-" .. n,
      { id = "s-" .. n, time = iso(os.time()), resources = { arn }, ["detail.CommonName"] = "acm-state.example" })
    assert.are.equal("ISSUED", acm.certificate.status) -- ACM's word
    assert.are.equal("active", acm.certificate.state)
    assert.are.equal("active", acm.entry.state)
    assert.is_true(acm.state_misused) -- certs.list{state=} takes states only
    local cf = post(srv, "deployment.succeeded", { hostname = "cf-state.example" })
    assert.are.equal("active", cf.certificate.state)
    assert.are.equal("active", cf.entry.state)
    local dcv = post(srv, "validation.failed", { hostname = "dcv-state.example" })
    assert.are.equal("pending_validation", dcv.entry.state)
    local function has(list, key)
      for _, k in ipairs(list or {}) do if k == key then return true end end
      return false
    end
    assert.is_true(has(cf.same_state, "aws-acm:" .. arn) and has(cf.same_state, "cloudflare:cert-cf-state.example"))
    assert.is_false(has(dcv.same_state, "aws-acm:" .. arn))
    assert.is_true(has(dcv.same_state, "cloudflare:cert-dcv-state.example"))

    local function certs(args)
      return fs.run(("%s certs %s --data '%s'"):format(Server.certhook, args, srv.data))
    end
    local out, err, code = certs("--status issued") -- the provider's word, in any case
    assert.are.equal(0, code, err)
    assert.truthy(out:match("HOSTNAME%s+PROVIDER%s+STATUS%s+STATE%s+EXPIRES IN"), out)
    assert.truthy(out:match("acm%-state%.example%s+aws%-acm%s+ISSUED%s+active"), out)
    assert.falsy(out:match("cf%-state"), out)
    out, err, code = certs("--status ACTIVE") -- the state
    assert.are.equal(0, code, err)
    assert.truthy(out:match("acm%-state%.example"), out)
    assert.truthy(out:match("cf%-state%.example%s+cloudflare%s+active%s+active"), out)
    assert.falsy(out:match("dcv%-state"), out)
    _, err, code = certs("--status revoked") -- a state nothing is in: no match, no error
    assert.are.equal(0, code, err)
    assert.truthy(err:match("no certificates match"), err)
    out, err, code = certs("--status issuedd --json") -- neither: bad usage, and what there is
    assert.are.equal(2, code, out)
    assert.are.equal("", out)
    assert.truthy(err:find('no certificate has the status or state "issuedd"', 1, true), err)
    assert.truthy(err:find("pending_validation, pending_issuance, pending_deployment, active, expired, " ..
      "revoked, deleted, failed", 1, true), err)
    assert.truthy(err:match("other statuses seen: [^\n]*ISSUED"), err)
  end)

  it("keeps the status and the state before the last change of each: previous_status, previous_state", function()
    local host = "prev.example"
    local first = post(srv, "validation.failed", { hostname = host })
    assert.are.equal("pending_validation", first.entry.status)
    assert.is_nil(first.entry.previous_status) -- a new entry: none before
    assert.is_nil(first.entry.previous_state)
    local changed = post(srv, "validation.succeeded", { hostname = host })
    assert.are.equal("pending_issuance", changed.entry.status)
    assert.are.equal("pending_validation", changed.entry.previous_status)
    assert.are.equal("pending_validation", changed.entry.previous_state)
    local again = post(srv, "validation.succeeded", { hostname = host }) -- the same status: kept
    assert.are.equal("pending_issuance", again.entry.status)
    assert.are.equal("pending_validation", again.entry.previous_status)
    assert.are.equal("pending_validation", again.entry.previous_state)
    assert.are.equal("pending_validation", again.previous.previous_status) -- in the event's context too
    local entry = certs_entry(srv, "cloudflare:cert-" .. host)
    assert.are.equal("pending_issuance", entry.status)
    assert.are.equal("pending_validation", entry.previous_status)
    local deleted = post(srv, "deletion.succeeded", { hostname = host })
    assert.are.equal("deleted", deleted.entry.status)
    assert.are.equal("pending_issuance", deleted.entry.previous_status)
    assert.are.equal("pending_issuance", deleted.entry.previous_state)
  end)

  it("keeps a deleted certificate as deleted, out of the list", function()
    post(srv, "deletion.succeeded", { hostname = "soon.example" })
    local out = fs.run(("%s certs --data '%s'"):format(Server.certhook, srv.data))
    assert.falsy(out:match("soon%.example"))
    out = fs.run(("%s certs --status deleted --data '%s'"):format(Server.certhook, srv.data))
    assert.truthy(out:match("soon%.example%s+cloudflare%s+deleted"), out)
  end)
end)

-- A journal kept before previous_status (SQLite 0015, PostgreSQL 0008) is upgraded at open; its
-- entries have none until their status next changes.
describe("a journal kept before previous_status", function()
  it("is upgraded at open; an entry gets the status it had at its next change", function()
    local pg = os.getenv("CERTHOOK_TEST_JOURNAL") == "postgresql"
    local srv = Server.start { config = CONFIG, handlers = { ["inv.lua"] = HANDLER } }
    local host = "upgraded.example"
    post(srv, "validation.failed", { hostname = host })
    post(srv, "validation.succeeded", { hostname = host })
    assert.are.equal(0, srv:stop())
    -- the journal as the previous release left it: no such columns, the version before
    if pg then
      srv:sql("ALTER TABLE inventory DROP COLUMN previous_status, DROP COLUMN previous_state;" ..
        " UPDATE meta SET version = 7")
    else
      srv:sql("ALTER TABLE inventory DROP COLUMN previous_status; ALTER TABLE inventory DROP COLUMN previous_state;" ..
        " PRAGMA user_version = 14")
    end
    srv:launch()
    local entry = certs_entry(srv, "cloudflare:cert-" .. host)
    assert.are.equal("pending_issuance", entry.status)
    assert.is_true(entry.previous_status == nil or entry.previous_status == cjson.null) -- none until the next change
    local same = post(srv, "validation.succeeded", { hostname = host })
    assert.is_nil(same.entry.previous_status)
    local changed = post(srv, "issuance.succeeded", { hostname = host })
    assert.are.equal("pending_deployment", changed.entry.status)
    assert.are.equal("pending_issuance", changed.entry.previous_status)
    assert.are.equal("pending_issuance", changed.entry.previous_state)
    srv:cleanup()
  end)
end)

-- The fold is written in a transaction of its own, after the one the 202 waits for: a crash
-- between the two leaves journaled events unfolded, which the next start folds from the log
-- (facts kept with each event) before anything is dispatched -- the same contexts, in order.
describe("a fold lost to a crash", function()
  -- (PostgreSQL: the server started again is another server, which runs the killed one's events
  -- once its lease ran out -- and once they are folded)
  it("is made again from the log at the next start, with the same contexts", function()
    local pg = os.getenv("CERTHOOK_TEST_JOURNAL") == "postgresql"
    local srv = Server.start { config = CONFIG .. (pg and "delivery = { timeout = 1, lease = 2 }\n" or ""),
                               handlers = { ["inv.lua"] = HANDLER }, env = { CERTHOOK_TEST_HOLD_FOLD = "hold" } }
    local host = "crash.example"
    post(srv, "validation.failed", { hostname = host }) -- folded: the entry exists
    fs.write(srv.dir .. "/hold", "") -- the next fold waits (and the writer with it)
    local body, id = events.cloudflare("validation.failed", { hostname = host })
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status) -- journaled
    require("socket").sleep(0.3)
    assert.is_nil(seen(srv, id), "dispatched before its fold was written")
    srv:stop("KILL")
    os.remove(srv.dir .. "/hold")
    srv:launch()
    local r = assert(fs.wait_for(function() return seen(srv, id) end, 10), "not delivered: " .. id)
    assert.are.equal(2, r.repeats)
    assert.is_false(r.stale)
    assert.are.equal("certificate.validation.failed", r.previous.last_type)
    assert.are.equal(1, r.previous.repeats)
    assert.are.equal(2, r.entry.repeats) -- folded once
    assert.are.equal(id, r.entry.last_event)
    srv:cleanup()
  end)
end)
