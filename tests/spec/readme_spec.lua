-- The README agrees with the code where both say the same (issue 21: they had drifted apart):
-- its command synopsis is what `certhook CMD --help` prints, and its LuaRocks install names
-- every development package the build uses.
local fs = require "helpers.fs"
local Server = require "helpers.server"

local README = assert(fs.read("README.md"))

-- Text with every run of white space as one space: line breaks and alignment differ.
local function words(s)
  return (s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

describe("the README", function()
  it("shows every command's usage as `certhook CMD --help` prints it", function()
    local block = assert(README:match("\n## Command line\n\n```\n(.-)```\n"), "no synopsis")
    local shown = {}
    for line in block:gmatch("[^\n]+") do
      if not line:match("^#") then shown[#shown + 1] = line end -- # what the command does
    end
    local usages = {}
    for cmd in fs.run(Server.certhook .. " --help"):gmatch("\n  (%a+) ") do
      local help, err, code = fs.run(Server.certhook .. " " .. cmd .. " --help")
      assert.are.equal(0, code, err)
      local usage = assert(help:match("^usage: (.-)\n\n"), help)
      assert.truthy(usage:find("[--config FILE]", 1, true), cmd .. ": every command takes --config")
      usages[#usages + 1] = usage
    end
    assert.are.equal(11, #usages)
    assert.are.equal(words(table.concat(usages, "\n")), words(table.concat(shown, "\n")))
  end)

  it("installs every development package of the build before LuaRocks builds", function()
    local debs = assert(fs.read("Makefile"):match("\nRUN_DEBS%s*=(.-[^\\])\n"))
    local install = assert(README:match("\n### Installing with LuaRocks\n.-apt%-get install %-y (.-[^\\])\n"))
    local listed = {}
    for p in install:gmatch("[^%s\\]+") do listed[p] = true end
    local n = 0
    for p in debs:gmatch("[^%s\\]+") do
      if p:match("%-dev$") then
        n = n + 1
        assert(listed[p], p .. " is missing from the README's apt-get line: " .. install)
      end
    end
    assert.is_true(n >= 9, debs)
  end)
end)
