-- One event, one path (DESIGN §1, §3): the event a handler gets -- in serve, after a restart,
-- in certhook run -- is a plain table, raw included, exactly what certhook normalize prints;
-- and a journal written by the previous release is upgraded at open and dispatched.
local cjson = require "cjson"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local FIX = "tests/fixtures/"
local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" },\n' ..
  '  ibm = { provider = "ibm-cm", insecure = true } }\n'

-- Writes what the handler got, as JSON: the event through json.encode, and the keys pairs saw.
-- Fails on its first call for each event when FAIL_FIRST is set in the handler's directory.
local DUMP = [[
local certhook = require "certhook"
return { ["*"] = function(e)
  local keys = {}
  for k in pairs(e) do keys[#keys + 1] = k end
  table.sort(keys)
  local f = assert(io.open("got-" .. e.id:gsub("[^%w]", "_") .. ".json", "w"))
  f:write(certhook.json.encode({ event = e, keys = keys }))
  f:close()
  if io.open("fail-first") and not io.open("failed-" .. e.id:gsub("[^%w]", "_")) then
    io.open("failed-" .. e.id:gsub("[^%w]", "_"), "w"):close()
    error("the first attempt fails")
  end
end }]]

local function got(srv, id)
  local text = fs.read(srv.dir .. "/got-" .. id:gsub("[^%w]", "_") .. ".json")
  local ok, e = pcall(cjson.decode, text or "") -- the handler may be writing it still
  return ok and e or nil
end

-- What certhook normalize prints for the fixture (as the source named `source` would get it).
local function normalized(file, provider, source)
  local out, err, code = fs.run(("%s normalize %s --provider %s --source %s"):format(
    Server.certhook, FIX .. file, provider, source))
  assert(code == 0, err)
  return cjson.decode(out)
end

-- Whether a and b are the same tree, numbers within what JSON's 14 digits keep.
local function same(a, b, path)
  if type(a) == "number" and type(b) == "number" then
    assert(math.abs(a - b) <= 1e-6 * math.max(1, math.abs(a)), ("%s: %s ~= %s"):format(path, a, b))
    return
  end
  assert(type(a) == type(b), ("%s: %s ~= %s"):format(path, tostring(a), tostring(b)))
  if type(a) ~= "table" then
    assert(a == b, ("%s: %s ~= %s"):format(path, tostring(a), tostring(b)))
    return
  end
  for k, v in pairs(a) do same(v, b[k], path .. "." .. tostring(k)) end
  for k in pairs(b) do assert(a[k] ~= nil, path .. "." .. tostring(k) .. " is extra") end
end

-- The two events are the same but for when each was received.
local function assert_same_event(want, have)
  want.received_at, have.received_at = nil, nil
  same(want, have, "event")
end

local function keys_of(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

describe("the event a handler gets", function()
  local srv
  setup(function()
    srv = Server.start { config = SOURCES .. "delivery = { backoff = 30, max_backoff = 30 }\n",
      handlers = { ["dump.lua"] = DUMP } }
  end)
  teardown(function() if srv then srv:cleanup() end end)

  it("in serve is what certhook normalize prints: a plain table, raw included", function()
    local file = "cloudflare/ssl.custom_hostname_certificate.validation.failed.json"
    local body = fs.read(FIX .. file):gsub("<<WEBHOOK_ID>", "one-path-1")
    fs.write(srv.dir .. "/body.json", body)
    local r = srv:post("/hooks/cloudflare", body, CF)
    assert.are.equal(202, r.status)
    local g = assert(fs.wait_for(function() return got(srv, r.json.id) end, 10))
    local out, err, code = fs.run(("%s normalize %s/body.json --provider cloudflare --source cloudflare")
      :format(Server.certhook, srv.dir))
    assert(code == 0, err)
    local want = cjson.decode(out)
    assert.are.same(keys_of(want), g.keys) -- pairs sees every field, raw among them
    assert.truthy(g.event.raw and g.event.raw.metadata.event.id == "one-path-1")
    assert_same_event(want, g.event)
  end)

  it("after a restart, on its retry, is the same", function()
    fs.write(srv.dir .. "/fail-first", "")
    local body = fs.read(FIX .. "ibm-cm/v4.cert_issued.json")
    local r = srv:post("/hooks/ibm", body)
    assert.are.equal(202, r.status)
    local first = assert(fs.wait_for(function() return got(srv, r.json.id) end, 10))
    assert.are.equal(0, srv:stop())
    os.remove(srv.dir .. "/got-" .. r.json.id:gsub("[^%w]", "_") .. ".json")
    srv:sql(("UPDATE deliveries SET next_at = 0 WHERE event_seq = (SELECT seq FROM events WHERE id = '%s')")
      :format(r.json.id))
    srv:launch()
    local again = assert(fs.wait_for(function() return got(srv, r.json.id) end, 10),
      "the retry after the restart did not run")
    assert.are.same(first, again)
    local want = normalized("ibm-cm/v4.cert_issued.json", "ibm-cm", "ibm")
    assert_same_event(want, again.event)
    os.remove(srv.dir .. "/fail-first")
  end)

  it("in certhook run is the same", function()
    local dir = fs.tmpdir()
    fs.write(dir .. "/handlers/dump.lua", DUMP)
    local file = FIX .. "cloudflare/alert.hostname_aop_custom_certificate_expiration_type.json"
    local _, err, code = fs.run(("cd '%s' && %s run --event %s/%s --handlers handlers --provider cloudflare --source cloudflare --data data")
      :format(dir, Server.certhook, os.getenv("PWD") or ".", file))
    assert(code == 0, err)
    local want = normalized("cloudflare/alert.hostname_aop_custom_certificate_expiration_type.json", "cloudflare", "cloudflare")
    local text = assert(fs.read(dir .. "/got-" .. want.id:gsub("[^%w]", "_") .. ".json"))
    local g = cjson.decode(text)
    assert.are.same(keys_of(want), g.keys)
    assert_same_event(want, g.event)
    fs.rm(dir)
  end)
end)

describe("a journal of the previous release", function()
  it("is upgraded at open, and its events are dispatched #sqlite", function()
    local dir = fs.tmpdir()
    os.execute(("mkdir -p '%s/data' && sqlite3 '%s/data/certhook.db' < %sjournal-v4.sql"):format(dir, dir, FIX))
    -- the journal's delivery to retry is a.lua's
    local srv = Server.start { dir = dir, config = SOURCES, handlers = { ["a.lua"] = DUMP } }
    local cf = assert(fs.wait_for(function() return got(srv, "cloudflare:<<WEBHOOK_ID>") end, 10),
      "the never-dispatched event was not")
    assert.are.equal("certificate.validation.failed", cf.event.type)
    assert.are.equal("blog.com", cf.event.hostname)
    assert.truthy(cf.event.raw.metadata)
    local ibm_id = "ibm:sha256:8c772bc0b91ca4f3043ccee3f883b33d6096563c5612f6a5d4494f70e5f1cf44"
    local ibm = assert(fs.wait_for(function() return got(srv, ibm_id) end, 10),
      "the delivery to retry was not run")
    assert.are.equal("certificate.issuance.succeeded", ibm.event.type)
    assert.are.equal("cert_issued", ibm.event.raw.event_type) -- the claims, as it was journaled
    assert.are.equal(ibm_id, ibm.event.id)
    assert.truthy(srv:log_text():match("2 events journaled by an earlier certhook were normalized"))
    assert(srv:wait_status(ibm_id, "a.lua:*", "done"))
    assert.are.same({ "15" }, srv:sql("PRAGMA user_version")[1])
    srv:cleanup()
  end)
end)
