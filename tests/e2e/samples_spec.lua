-- certhook send --sample (issue 17): every type `certhook send --sample list` names, for every
-- provider, is a payload that `certhook normalize` reads as that type and that a running server
-- takes (2xx) from `certhook send --sample TYPE --provider P`, authenticated as that provider's
-- client does it -- Cloudflare's cf-webhook-auth secret, IBM Certificate Manager's RS256 JWT
-- signed with --sign-key and verified with the source's public_key -- and hands to a handler as
-- an event of that type.
local cjson = require "cjson"
local core = require "helpers.core"
local fs = require "helpers.fs"
local jwt = require "helpers.jwt"
local Server = require "helpers.server"

local CF_SECRET, KEY = "cf-sample-secret-0123456789", "sample-key-0123456789abcdef"

-- Each handler call leaves the type it got in seen-<id>.
local SEEN = [[
return { ["*"] = function(e)
  local f = assert(io.open("seen-" .. e.id:gsub("%W", "_"), "w"))
  f:write(e.type)
  f:close()
end }]]

describe("certhook send --sample", function()
  local srv, dir, priv, pub

  -- `certhook ARGS` in the server's directory: stdout and stderr, exit status.
  local function certhook(args)
    local out, err, code = fs.run(("cd '%s' && %s %s"):format(dir, Server.certhook, args))
    return out .. err, code
  end

  -- {provider = {type, ...}} as `send --sample list` prints it.
  local function sample_list()
    local out, code = certhook("send --sample list")
    assert.are.equal(0, code, out)
    local list = {}
    for name, types in out:gmatch("([%w-]+): ([^\n]*)") do
      list[name] = {}
      for t in types:gmatch("%S+") do table.insert(list[name], t) end
    end
    return list
  end

  -- What `certhook send` adds for a provider: IBM Certificate Manager's signature.
  local function send_args(provider)
    return provider == "ibm-cm" and " --sign-key " .. priv or ""
  end

  setup(function()
    dir = fs.tmpdir()
    priv, pub = jwt.keypair(dir, "ibm")
    local config = ([[
sources = {
  cloudflare = { provider = "cloudflare", secret = %q },
  ibm = { provider = "ibm-cm", public_key = %q },
  acm = { provider = "aws-acm", secret = %q },
  kv = { provider = "azure-keyvault", secret = %q },
  sm = { provider = "ibm-sm", secret = %q },
  dc = { provider = "digicert", secret = %q },
}
]]):format(CF_SECRET, pub, KEY, KEY, KEY, KEY)
    srv = Server.start { dir = dir, config = config, handlers = { ["seen.lua"] = SEEN } }
    fs.write(dir .. "/client.conf.lua", ('listen = "127.0.0.1:%d"\n'):format(srv.port) .. config)
  end)
  teardown(function() if srv then srv:cleanup() end end)

  it("lists samples of every provider, Cloudflare's and IBM Certificate Manager's too", function()
    local list = sample_list()
    for _, p in ipairs { "cloudflare", "ibm-cm", "aws-acm", "azure-keyvault", "ibm-sm", "digicert" } do
      assert(list[p] and #list[p] >= 3, p)
    end
    assert.are.same({ "certificate.validation.succeeded", "certificate.validation.failed",
      "certificate.issuance.succeeded", "certificate.issuance.failed", "certificate.deployment.succeeded",
      "certificate.deployment.failed", "certificate.deletion.succeeded", "certificate.deletion.failed",
      "certificate.renewal.succeeded", "certificate.renewal.failed", "certificate.expiration.upcoming",
      "notification.test" }, list.cloudflare)
    assert.are.same({ "certificate.validation.required", "certificate.validation.succeeded",
      "certificate.issuance.succeeded", "certificate.issuance.failed", "certificate.renewal.succeeded",
      "certificate.renewal.failed", "certificate.expiration.upcoming", "certificate.expiration.reached",
      "certificate.import.succeeded", "certificate.download.pending", "notification.test" }, list["ibm-cm"])
    local out = certhook("send --sample list --provider ibm-cm")
    assert.are.equal("ibm-cm: " .. table.concat(list["ibm-cm"], " ") .. "\n", out)
  end)

  it("gives payloads certhook normalize reads as the type asked for, signed ones verified", function()
    local n = 0
    for provider, types in pairs(sample_list()) do
      for _, t in ipairs(types) do
        local body = assert(core.cli.sample(provider, t))
        local extra = ""
        if provider == "ibm-cm" then -- as send posts it: {"data": "<JWT>"}
          body = assert(core.cli.send(provider, body, nil, { sign_key = priv }))
          assert.truthy(body:find('^{"data":"ey'), body)
          extra = " --public-key " .. pub
        end
        fs.write(dir .. "/sample.json", body)
        local out, err, code = fs.run(("cd '%s' && %s normalize sample.json --provider %s%s")
          :format(dir, Server.certhook, provider, extra))
        assert.are.equal(0, code, provider .. " " .. t .. ": " .. err)
        local e = cjson.decode(out)
        assert.are.equal(t, (e[1] or e).type, provider .. " " .. t)
        n = n + 1
      end
    end
    assert(n >= 45, n)
  end)

  it("posts each as the provider does: 202, and a handler gets an event of that type", function()
    for provider, types in pairs(sample_list()) do
      for _, t in ipairs(types) do
        local args = ("send --config client.conf.lua --sample %s --provider %s%s"):format(t, provider, send_args(provider))
        local out, code = certhook(args)
        assert.are.equal(0, code, args .. ": " .. out)
        local status, reply = out:match("^(%d+) ([^\n]*)")
        assert.are.equal("202", status, args .. ": " .. out)
        reply = cjson.decode(reply)
        local id = (reply.events and reply.events[1] or reply).id
        assert.are.equal(t, (reply.events and reply.events[1] or reply).type, args)
        assert(srv:wait_status(id, "seen.lua:*", "done"), args)
        assert.are.equal(t, fs.read(dir .. "/seen-" .. id:gsub("%W", "_")), args)
      end
    end
  end)

  it("is refused where the provider's client would be: no signature, another key, a wrong secret", function()
    local out, code = certhook("send --config client.conf.lua --sample certificate.issuance.succeeded --provider ibm-cm")
    assert.are.equal(1, code)
    assert.truthy(out:find("^401"), out)
    local other = jwt.keypair(dir, "other")
    out, code = certhook("send --config client.conf.lua --sample notification.test --provider ibm-cm --sign-key " .. other)
    assert.are.equal(1, code)
    assert.truthy(out:find("^401"), out)
    out, code = certhook("send --config client.conf.lua --sample notification.test --provider cloudflare --secret wrong-0123456789")
    assert.are.equal(1, code)
    assert.truthy(out:find("^401"), out)
  end)
end)
