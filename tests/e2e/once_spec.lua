-- certhook.once (DESIGN §7): fn runs to success at most once per key, across a retry, a
-- replay, a restart and two deliveries at once; a failing fn is not recorded; later calls get
-- the stored results.
local cjson = require "cjson"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local CONFIG = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n' ..
  "delivery = { backoff = 0.2, max_backoff = 0.5, max_attempts = 6 }\n"

-- event.metadata: key (the once key), fail_first (fn fails at its first run), after_fail (the
-- handler raises after once at its first attempt), slow (fn waits that many seconds).
local HANDLER = [[
local certhook = require "certhook"
local state, json = certhook.state, certhook.json
local function append(file, t)
  local f = assert(io.open(file, "a")) f:write(json.encode(t), "\n") f:close()
end
return {
  ["*"] = function(e)
    local m = e.metadata or {}
    if m.misuse then -- certhook.once's own argument checks, inside a handler (where it works)
      local _, no_key = pcall(certhook.once, "", function() end)
      local _, no_fn = pcall(certhook.once, "k-misuse", "not a function")
      append("misuse.jsonl", { no_key = no_key, no_fn = no_fn })
      return
    end
    if not m.key then return end
    local attempt = state.incr("attempt:" .. e.id)
    local a, b, c = certhook.once(m.key, function(x)
      local run = state.incr("runs:" .. m.key)
      append("runs.jsonl", { key = m.key, id = e.id, run = run })
      if m.slow then certhook.exec { argv = { "sleep", tostring(m.slow) } } end
      if m.fail_first and run == 1 then error("fn failed at its first run") end
      return run, x, { nested = { true } }
    end, "arg-" .. e.id)
    append("calls.jsonl", { key = m.key, id = e.id, attempt = attempt, a = a, b = b, c = c })
    if m.after_fail and attempt == 1 then error("the handler fails after once") end
  end,
}
]]

local function lines(srv, file)
  local out = {}
  for l in (fs.read(srv.dir .. "/" .. file) or ""):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(l) end
  return out
end

local function runs(srv, key)
  local n = 0
  for _, r in ipairs(lines(srv, "runs.jsonl")) do if r.key == key then n = n + 1 end end
  return n
end

local function calls(srv, id)
  local out = {}
  for _, c in ipairs(lines(srv, "calls.jsonl")) do if c.id == id then out[#out + 1] = c end end
  return out
end

local function post(srv, meta)
  local body, id = events.cloudflare("validation.failed", { meta = meta })
  assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
  return id
end

describe("certhook.once", function()
  local srv
  setup(function()
    srv = Server.start { config = CONFIG, handlers = { ["once.lua"] = HANDLER } }
  end)
  teardown(function() srv:cleanup() end)

  it("runs fn once across a retry, a replay and a restart, and returns its results each time", function()
    local id = post(srv, { key = "k1", after_fail = "yes" })
    assert(fs.wait_for(function() return #calls(srv, id) == 2 end, 10), "no retry")
    local c = calls(srv, id)
    assert.are.same({ 1, "arg-" .. id, { nested = { true } } }, { c[1].a, c[1].b, c[1].c })
    assert.are.same({ c[1].a, c[1].b, c[1].c }, { c[2].a, c[2].b, c[2].c })
    local _, err, code = fs.run(("%s replay %s --handler 'once.lua:*' --data '%s'"):format(Server.certhook, id, srv.data))
    assert.are.equal(0, code, err)
    assert(fs.wait_for(function() return #calls(srv, id) == 3 end, 10), "the replay did not run")
    assert.are.equal(0, srv:stop())
    srv:launch()
    local other = post(srv, { key = "k1" })
    assert(fs.wait_for(function() return #calls(srv, other) == 1 end, 10))
    assert.are.equal("arg-" .. id, calls(srv, other)[1].b) -- the first run's results
    assert.are.equal(1, runs(srv, "k1"))
  end)

  it("does not record a failing fn: the retry runs it again, and then never", function()
    local id = post(srv, { key = "k2", fail_first = "yes" })
    assert(fs.wait_for(function() return #calls(srv, id) == 1 end, 10), "no successful retry")
    assert.are.equal(2, runs(srv, "k2"))
    assert.are.equal(2, calls(srv, id)[1].a)
    local again = post(srv, { key = "k2" })
    assert(fs.wait_for(function() return #calls(srv, again) == 1 end, 10))
    assert.are.equal(2, runs(srv, "k2"))
  end)

  it("runs fn once when two deliveries reach the same key at once", function()
    local a = post(srv, { key = "k3", slow = 1 })
    local b = post(srv, { key = "k3", slow = 1 })
    assert(fs.wait_for(function() return #calls(srv, a) == 1 and #calls(srv, b) == 1 end, 15))
    assert.are.equal(1, runs(srv, "k3"))
    assert.are.same(calls(srv, a)[1].b, calls(srv, b)[1].b)
    -- the one that found the key held raised, and was retried
    assert.truthy(srv:log_text():match("is running in another delivery"))
  end)

  -- (it was called outside a handler, where any call raises: its checks could go unnoticed)
  it("raises on misuse, naming what is wrong", function()
    post(srv, { misuse = true })
    assert(fs.wait_for(function() return #lines(srv, "misuse.jsonl") == 1 end, 10))
    local m = lines(srv, "misuse.jsonl")[1]
    assert.truthy(m.no_key:match("certhook%.once: the key must be a non%-empty string"), m.no_key)
    assert.truthy(m.no_fn:match("certhook%.once: fn must be a function"), m.no_fn)
  end)
end)
