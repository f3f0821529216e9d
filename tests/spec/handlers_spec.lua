-- Handler loading and running (DESIGN §4): what `check` accepts and refuses (with file:line),
-- and how `run` matches patterns and isolates handlers from each other.
local core = require "helpers.core"
local fs = require "helpers.fs"

local FIX = "tests/fixtures/"

local function handlers(files)
  local dir = fs.tmpdir()
  for name, src in pairs(files) do fs.write(dir .. "/" .. name, src) end
  return dir
end

describe("handler loading", function()
  it("loads every *.lua file in name order, patterns sorted within a file", function()
    local dir = handlers {
      ["b.lua"] = 'return { ["z.*"] = function() end, ["a.*"] = function() end }',
      ["a.lua"] = 'return { ["*"] = function() end }',
      ["notes.txt"] = "not a handler",
      [".hidden.lua"] = "syntax error here",
    }
    local r = assert(core.check(dir))
    assert.are.equal(2, r.files)
    assert.are.same({ "a.lua:*", "b.lua:a.*", "b.lua:z.*" }, r.handlers)
    fs.rm(dir)
  end)

  it("accepts an empty table", function()
    local dir = handlers { ["empty.lua"] = "return {}" }
    local r = assert(core.check(dir))
    assert.are.same({}, r.handlers)
    fs.rm(dir)
  end)

  it("lets handler files require certhook and its API", function()
    local dir = handlers { ["api.lua"] = [[
      local certhook = require "certhook"
      assert(certhook.log.info and certhook.http.request and certhook.time.iso8601 and certhook.json.encode)
      assert(type(certhook.version) == "string")
      return {}
    ]] }
    assert(core.check(dir))
    fs.rm(dir)
  end)

  local function refused(files, ...)
    local dir = handlers(files)
    local r, err = core.check(dir)
    assert.is_nil(r)
    for _, pattern in ipairs { ... } do
      assert.truthy(err:find(pattern:gsub("DIR", dir), 1, true), ("%q not in: %s"):format(pattern, err))
    end
    fs.rm(dir)
    return err
  end

  it("refuses a syntax error, naming file and line", function()
    refused({ ["bad.lua"] = "return {\n  ['x'] = function() end\n  ['y'] = 1\n}" }, "DIR/bad.lua:3:")
  end)

  it("refuses an error raised while loading, naming file and line", function()
    refused({ ["boom.lua"] = "local x = 1\nerror('config missing')\nreturn {}" }, "DIR/boom.lua:2: config missing")
    refused({ ["nilcall.lua"] = "\n\nlocal t = nil\nreturn t.x" }, "DIR/nilcall.lua:4:")
  end)

  it("refuses a file that returns something other than a table", function()
    refused({ ["fn.lua"] = "return function() end" }, "DIR/fn.lua: must return a table", "got function")
    refused({ ["nothing.lua"] = "local x = 1" }, "DIR/nothing.lua: must return a table", "got nil")
  end)

  it("refuses patterns that do not map to functions, and keys that are not patterns", function()
    refused({ ["v.lua"] = 'return { ["certificate.*"] = "log it" }' },
      'DIR/v.lua: pattern "certificate.*" must map to a function, got string')
    refused({ ["k.lua"] = "return { function() end }" }, "DIR/k.lua: keys must be event type patterns", "number key")
  end)

  it("reports every broken file, not only the first", function()
    local err = refused({
      ["1.lua"] = "return 1",
      ["2.lua"] = "return {}",
      ["3.lua"] = "x x x",
    }, "DIR/1.lua: must return a table", "DIR/3.lua:1:")
    assert.is_nil(err:find("2.lua", 1, true))
  end)

  it("refuses a missing directory", function()
    local r, err = core.check("/nonexistent/handlers")
    assert.is_nil(r)
    assert.truthy(err:match("handlers directory /nonexistent/handlers: No such file"), err)
  end)
end)

describe("running handlers", function()
  local body = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.validation.failed.json")
  local out

  before_each(function() out = os.tmpname() end)
  after_each(function() os.remove(out) end)

  local function recorder(pattern, tag)
    return ([[
      return { [%q] = function(e)
        local f = io.open(%q, "a") f:write(%q, " ", e.type, "\n") f:close()
      end }]]):format(pattern, out, tag)
  end

  local function lines()
    local t = {}
    for l in (fs.read(out) or ""):gmatch("[^\n]+") do t[#t + 1] = l end
    return t
  end

  it("runs every matching handler, by canonical or provider type, with wildcards", function()
    local dir = handlers {
      ["1.lua"] = recorder("*", "all"),
      ["2.lua"] = recorder("certificate.*.failed", "failed"),
      ["3.lua"] = recorder("ssl.custom_hostname_certificate.*", "provider"),
      ["4.lua"] = recorder("certificate.issuance.*", "issuance"),
      ["5.lua"] = recorder("certificate.validation.failed", "exact"),
    }
    local r = assert(core.run(dir, body))
    assert.are.equal("certificate.validation.failed", r.type)
    assert.are.equal(4, #r.results)
    for _, res in ipairs(r.results) do assert.is_true(res.ok) end
    assert.are.same({ "all certificate.validation.failed", "failed certificate.validation.failed",
      "provider certificate.validation.failed", "exact certificate.validation.failed" }, lines())
    fs.rm(dir)
  end)

  it("gives every handler a fresh copy of the event", function()
    local dir = handlers {
      ["1.lua"] = [[return { ["*"] = function(e)
        e.hostname = "changed"; e.certificate.id = "changed"; e.raw.data = nil
        assert(e.certificates[1] == e.certificate)
      end }]],
      ["2.lua"] = ([[return { ["*"] = function(e)
        local f = io.open(%q, "w")
        f:write(e.hostname, " ", e.certificate.id, " ", tostring(e.raw.data ~= nil), " ",
          tostring(e.certificates[1] == e.certificate))
        f:close()
      end }]]):format(out),
    }
    assert(core.run(dir, body))
    assert.are.equal("blog.com <<CERTIFICATE_ID> true true", fs.read(out))
    fs.rm(dir)
  end)

  it("reports a failing handler with file:line and still runs the others", function()
    local dir = handlers {
      ["1.lua"] = 'return { ["*"] = function(e)\n  error("no luck with " .. e.hostname)\nend }',
      ["2.lua"] = 'return { ["*"] = function(e) error({ code = 42 }) end }',
      ["3.lua"] = 'return { ["*"] = function(e) error(setmetatable({}, { __tostring = function() return "custom" end })) end }',
      ["4.lua"] = 'return { ["*"] = function(e) coroutine.yield() end }',
      ["5.lua"] = recorder("*", "still"),
    }
    local r = assert(core.run(dir, body))
    assert.are.equal(5, #r.results)
    assert.is_false(r.results[1].ok)
    assert.truthy(r.results[1].error:match("1%.lua:2: no luck with blog.com"), r.results[1].error)
    assert.are.equal("(error object is a table value)", r.results[2].error)
    assert.are.equal("custom", r.results[3].error)
    assert.truthy(r.results[4].error:match("yielded"))
    assert.is_true(r.results[5].ok)
    assert.are.same({ "still certificate.validation.failed" }, lines())
    fs.rm(dir)
  end)

  it("runs nothing when no pattern matches", function()
    local dir = handlers { ["1.lua"] = recorder("certificate.issuance.*", "x") }
    local r = assert(core.run(dir, body))
    assert.are.same({}, r.results)
    fs.rm(dir)
  end)
end)
