-- certhook.state (DESIGN §5): values are copies; nil, booleans, numbers, strings and
-- JSON-able tables only; TTL; incr; keys; misuse raises. Exercised through `run`, which gives
-- handlers the state of a data directory as serve does.
local core = require "helpers.core"
local fs = require "helpers.fs"

local body = fs.read("tests/fixtures/cloudflare/test-message.json")

-- Runs `code` as the body of a handler; returns the run's result for it.
local function in_handler(code, data)
  local dir = fs.tmpdir()
  fs.write(dir .. "/h/t.lua", "local state = require('certhook').state\nreturn { ['*'] = function(event)\n" ..
    code .. "\nend }")
  local r = assert(core.run(dir .. "/h", body, { data = data or (dir .. "/data") }))
  fs.rm(dir)
  return r.results[1]
end

local function ok(code, data)
  local res = in_handler(code, data)
  assert(res.ok, res.error)
end

local function raises(code, pattern)
  local res = in_handler(code)
  assert.is_false(res.ok, "expected an error")
  assert.truthy(res.error:match(pattern), res.error)
end

describe("certhook.state", function()
  it("stores copies of nil, booleans, numbers, strings and JSON-able tables", function()
    ok [[
      local v = { name = "a.example", tags = { "x", "y" }, n = 3, f = 1.5, ok = true, nested = { deep = { 1, 2 } }, empty = {} }
      assert(state.set("t", v) == true)
      v.name = "changed"; v.tags[1] = "changed"
      local got = state.get("t")
      assert(got.name == "a.example" and got.tags[1] == "x" and got.tags[2] == "y", "not a copy")
      assert(math.type(got.n) == "integer" and got.f == 1.5 and got.ok == true and got.nested.deep[2] == 2)
      assert(next(got.empty) == nil)
      got.name = "mine"
      assert(state.get("t").name == "a.example", "get must return a copy")
      assert(state.set("s", "text") and state.get("s") == "text")
      assert(state.set("i", 42) and math.type(state.get("i")) == "integer")
      assert(state.set("b", false) and state.get("b") == false)
      assert(state.set("s", nil) and state.get("s") == nil, "set nil deletes")
      assert(state.get("never set") == nil)
    ]]
  end)

  it("counts with incr, integers staying integers", function()
    ok [[
      assert(state.incr("c") == 1)
      assert(state.incr("c") == 2)
      assert(state.incr("c", 10) == 12 and math.type(state.incr("c", 0)) == "integer")
      assert(state.incr("c", 0.5) == 12.5)
      assert(state.incr("c", -12.5) == 0)
    ]]
  end)

  it("deletes and lists keys by prefix, in order", function()
    ok [[
      for _, k in ipairs { "dcv:b.example", "dcv:a.example", "other", "dcv:c.example" } do state.set(k, 1) end
      assert(state.delete("dcv:c.example") == true)
      local keys = state.keys("dcv:")
      assert(#keys == 2 and keys[1] == "dcv:a.example" and keys[2] == "dcv:b.example", table.concat(keys, ","))
      assert(#state.keys() == 3 and #state.keys("nothing:") == 0)
    ]]
  end)

  it("forgets a value after its TTL", function()
    ok [[
      state.set("short", "x", 0.2)
      state.set("long", "y", 60)
      assert(state.get("short") == "x")
      local t = os.clock() + 0.3 while os.clock() < t do end
      assert(state.get("short") == nil, "expired value returned")
      assert(state.get("long") == "y")
      local keys = state.keys()
      assert(#keys == 1 and keys[1] == "long")
      assert(state.incr("short") == 1, "incr restarts an expired key")
    ]]
  end)

  it("keeps values across runs (the same data directory)", function()
    local data = fs.tmpdir()
    ok([[state.set("kept", { n = 1 })]], data)
    ok([[assert(state.get("kept").n == 1)]], data)
    fs.rm(data)
  end)

  describe("raises on misuse", function()
    it("for values JSON cannot hold, saying where", function()
      raises([[state.set("k", function() end)]], "value is a function, which cannot be stored")
      raises([[state.set("k", { a = { b = io.stdout } })]], "value%.a%.b is a userdata")
      raises([[state.set("k", { 1, 2, x = 3 })]], "mixes list and record keys")
      raises([[state.set("k", { [1] = "a", [3] = "c" })]], "key JSON cannot hold")
      raises([[state.set("k", { [true] = 1 })]], "key JSON cannot hold")
      raises([[state.set("k", 0/0)]], "not a finite number")
      raises([[local t = {} t.self = t state.set("k", t)]], "nests deeper")
    end)

    it("for bad keys and arguments", function()
      raises([[state.get()]], "bad argument #1 to 'get'")
      raises([[state.set("", 1)]], "must not be empty")
      raises([[state.set("k")]], "bad argument #2")
      raises([[state.set("k", 1, -5)]], "TTL")
      raises([[state.incr("k", "x")]], "bad argument #2")
    end)

    it("for incr on a value that is not a number", function()
      raises([[state.set("k", "text") state.incr("k")]], "certhook.state.incr: the value of k is not a number")
    end)
  end)

  it("is not available outside certhook", function()
    local ok2, err = pcall(function() return require("certhook").state.get("x") end)
    assert.is_false(ok2)
    assert.truthy(err:match("available to handlers run by certhook serve or certhook run"))
  end)
end)
