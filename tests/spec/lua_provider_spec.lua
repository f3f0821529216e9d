-- Providers written in Lua (DESIGN §5): sources.<name> = { provider = "lua", script = ... }. The
-- script's events, what certhook keeps of them and sets itself, and what happens when it fails:
-- the payload is journaled as unknown with error set. examples/providers/alertmanager.lua has
-- its own spec (alertmanager_spec.lua), through this path too.
local core = require "helpers.core"
local fs = require "helpers.fs"

describe("a Lua provider's configuration", function()
  local dir = fs.tmpdir()
  teardown(function() fs.rm(dir) end)

  -- What `certhook serve` says of a config with these sources (it stops before listening).
  local function serve_error(sources)
    fs.write(dir .. "/certhook.conf.lua", 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\ndata = "data"\n' ..
      "sources = " .. sources .. "\n")
    local _, err, code = fs.run(("cd '%s' && %s serve --config certhook.conf.lua"):format(dir,
      os.getenv("CERTHOOK") or "build/certhook-dev"))
    assert.are.equal(1, code)
    return err
  end

  it("needs a script and credentials", function()
    assert.truthy(serve_error('{ a = { provider = "lua", secret = "s3cret-value" } }'):find("sources.a.script is missing", 1, true))
    fs.write(dir .. "/ok.lua", "return { name = 'ok', normalize = function() end }")
    assert.truthy(serve_error('{ a = { provider = "lua", script = "ok.lua" } }'):find("sources.a has no credentials", 1, true))
    assert.truthy(serve_error('{ a = { provider = "lua", script = "ok.lua", insecure = true, timeout = 0 } }')
      :find("sources.a.timeout must be a number", 1, true))
  end)

  it("refuses a script that does not load, at start-up", function()
    fs.write(dir .. "/p1.lua", "return { name = 'x' }")
    assert.truthy(serve_error('{ a = { provider = "lua", insecure = true, script = "p1.lua" } }')
      :find("sources.a.script: p1.lua: normalize must be a function", 1, true))
    fs.write(dir .. "/p2.lua", "return { name = 'cloudflare', normalize = function() end }")
    assert.truthy(serve_error('{ a = { provider = "lua", insecure = true, script = "p2.lua" } }')
      :find("is a built-in provider's", 1, true))
    fs.write(dir .. "/p3.lua", "while true do end")
    assert.truthy(serve_error('{ a = { provider = "lua", insecure = true, script = "p3.lua", timeout = 0.2 } }')
      :find("time limit", 1, true))
    fs.write(dir .. "/p4.lua", "return {")
    assert.truthy(serve_error('{ a = { provider = "lua", insecure = true, script = "p4.lua" } }')
      :find("p4.lua:1:", 1, true))
  end)
end)

describe("a Lua provider", function()
  local dir = fs.tmpdir()
  teardown(function() fs.rm(dir) end)

  local function run(src, body, opts)
    local path = dir .. "/p" .. math.random(1e9) .. ".lua"
    fs.write(path, src)
    opts = opts or {}
    opts.provider, opts.script = "lua", path
    return core.cli.normalize(body or '{"a":1}', opts)
  end

  it("gets the decoded body and the request, and returns an event or a list", function()
    local events = assert(run([[return { name = "probe", normalize = function(body, request)
        return { type = "certificate.issuance.succeeded", hostname = body.host, method = request.method,
          certificate = { id = "c1", domains = { body.host } } } end }]], '{"host":"a.example.com"}'))
    local e = events[1]
    assert.are.equal("probe", e.provider)
    assert.are.equal("a.example.com", e.hostname)
    assert.are.equal("POST", e.method)
    assert.are.same({ host = "a.example.com" }, e.raw)
    assert.truthy(e.id:match("^lua:sha256:%x+$")) -- no id: the body's hash
    events = assert(run([[return { name = "two", normalize = function(body)
        return { { id = "two:1", type = "certificate.expiration.upcoming" }, { type = "nonsense" } } end }]]))
    assert.are.equal(2, #events)
    assert.are.equal("two:1", events[1].id)
    assert.are.equal("unknown", events[2].type) -- not a canonical type
    assert.are.equal("nonsense", events[2].provider_type)
  end)

  it("keeps tables the script shares shared, and its own fields out", function()
    local e = assert(run([[return { name = "s", normalize = function()
        local c = { id = "c1" }
        return { type = "certificate.issuance.succeeded", certificate = c, certificates = { c },
          source = "forged", provider = "forged", raw = "forged" } end }]]))[1]
    assert.are.equal(e.certificate, e.certificates[1])
    assert.are.equal("lua", e.source)
    assert.are.equal("s", e.provider)
    assert.are.same({ a = 1 }, e.raw)
  end)

  for name, case in pairs {
    raises = { 'error("no such alert")', "no such alert" },
    loops = { "while true do pcall(function() while true do end end) end", "time limit" },
    -- (time enough that the memory limit comes first on a slow build: ASan's allocator)
    ["runs out of memory"] = { 'local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(4096) .. i end', "not enough memory", 30 },
    -- 4 MiB is within the default 32 MiB: the source's memory_limit is what refuses it
    ["passes its memory_limit"] = { 'local t = {} for i = 1, 1024 do t[i] = ("x"):rep(4096) .. i end', "not enough memory", nil, 2 * 1024 * 1024 },
    ["returns a function"] = { "return { type = 'unknown', f = print }", "type function" },
    ["returns nothing"] = { "return {}", "returned no event" },
    ["returns a string"] = { "return 'event'", "returned string" },
    ["exits"] = { "os.exit(3)", "os.exit is not available" },
  } do
    it("that " .. name .. " journals the payload as unknown, with error set", function()
      local events = assert(run(("return { name = 'bad', normalize = function(body) %s end }"):format(case[1]),
        '{"keep":"me"}', { source = "bad-src", timeout = case[3], memory_limit = case[4] }))
      assert.are.equal(1, #events)
      local e = events[1]
      assert.are.equal("unknown", e.type)
      assert.truthy(e.error:find("^bad: "), e.error)
      assert.truthy(e.error:find(case[2], 1, true), e.error)
      assert.are.same({ keep = "me" }, e.raw)
      assert.truthy(e.id:match("^bad%-src:sha256:%x+$"))
    end)
  end
end)
