-- The command line (DESIGN §6): exit statuses 0 / 1 (act on it) / 2 (usage), config loading,
-- flags over config, and each command's output.
local cjson = require "cjson"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local FIX = "tests/fixtures/"

local function certhook(args, cwd)
  return fs.run((cwd and ("cd '" .. cwd .. "' && ") or "") .. Server.certhook .. " " .. args)
end

describe("certhook CLI", function()
  it("prints usage and exits 2 without a command, 2 for an unknown one", function()
    local out, _, code = certhook("")
    assert.are.equal(2, code)
    assert.truthy(out:match("usage: certhook <command>"))
    local _, err, code2 = certhook("frobnicate")
    assert.are.equal(2, code2)
    assert.truthy(err:match('unknown command "frobnicate"'))
  end)

  it("describes each command with --help", function()
    for _, cmd in ipairs { "serve", "check", "normalize", "run", "send", "version" } do
      local out, _, code = certhook(cmd .. " --help")
      assert.are.equal(0, code, cmd)
      assert.truthy(out:match("usage: certhook " .. cmd), cmd)
    end
  end)

  it("exits 2 on an unknown option or a missing value", function()
    local _, err, code = certhook("check --frob")
    assert.are.equal(2, code)
    assert.truthy(err:match("unknown option %-%-frob"))
    _, _, code = certhook("check --handlers")
    assert.are.equal(2, code)
    _, _, code = certhook("run")
    assert.are.equal(2, code)
  end)

  it("prints versions", function()
    local out, _, code = certhook("version")
    assert.are.equal(0, code)
    assert.truthy(out:match("^certhook %d+%.%d+%.%d+ %(Lua 5%.4"))
    assert.truthy(out:match("libmicrohttpd"))
  end)

  describe("normalize", function()
    it("prints the event as JSON", function()
      local out, _, code = certhook("normalize " .. FIX .. "cloudflare/ssl.custom_hostname_certificate.issuance.failed.json")
      assert.are.equal(0, code)
      local e = cjson.decode(out)
      assert.are.equal("certificate.issuance.failed", e.type)
      assert.are.equal("blog.com", e.hostname)
      assert.truthy(out:find('"dashboard_url"', 1, true) == nil)
    end)

    it("reads standard input and takes --provider and --source", function()
      local out, _, code = certhook("normalize - --provider ibm-cm --source ibm-eu < " .. FIX .. "ibm-cm/v2.cert_reimported.json")
      assert.are.equal(0, code)
      local e = cjson.decode(out)
      assert.are.equal("ibm-eu", e.source)
      assert.are.equal("certificate.import.succeeded", e.type)
    end)

    it("decodes an IBM JWT body and says the signature was not verified", function()
      local out, err, code = certhook("normalize " .. FIX .. "ibm-cm/jwt.real.test_notification_channel.json")
      assert.are.equal(0, code)
      assert.truthy(err:match("not verified"))
      assert.are.equal("notification.test", cjson.decode(out).type)
    end)

    it("takes every provider's payload, --provider P or detected, and a Lua provider's by --script or --source", function()
      for file, want in pairs {
        ["aws-acm/sns.Notification.certificate-approaching-expiration.json"] = { "aws-acm", "certificate.expiration.upcoming" },
        ["azure-keyvault/eventgrid.Microsoft.KeyVault.CertificateNearExpiry.json"] = { "azure-keyvault", "certificate.expiration.upcoming" },
        ["ibm-sm/secret_rotation_failed.json"] = { "ibm-sm", "certificate.renewal.failed" },
        ["digicert/certificate_issued.json"] = { "digicert", "certificate.issuance.succeeded" },
      } do
        for _, flags in ipairs { "", " --provider " .. want[1] } do
          local out, err, code = certhook("normalize " .. FIX .. file .. flags)
          assert.are.equal(0, code, file .. flags .. ": " .. err)
          local e = cjson.decode(out)
          assert.are.equal(want[1], e.provider)
          assert.are.equal(want[2], e.type)
        end
      end
      local am = FIX .. "alertmanager/cert-manager.CertManagerCertNotReady.firing.json"
      local out, err, code = certhook("normalize " .. am .. " --provider lua --script examples/providers/alertmanager.lua")
      assert.are.equal(0, code, err)
      assert.are.equal("certificate.issuance.failed", cjson.decode(out).type)
      local dir = fs.tmpdir()
      fs.write(dir .. "/certhook.conf.lua", ('sources = { am = { provider = "lua", script = %q, insecure = true } }\n')
        :format(os.getenv("PWD") .. "/examples/providers/alertmanager.lua"))
      out, err, code = certhook("normalize " .. os.getenv("PWD") .. "/" .. am .. " --source am", dir)
      assert.are.equal(0, code, err)
      local e = cjson.decode(out)
      assert.are.equal("alertmanager", e.provider)
      assert.are.equal("am", e.source)
      _, err, code = certhook("normalize " .. am .. " --provider lua")
      assert.are.equal(2, code)
      assert.truthy(err:find("--script FILE", 1, true))
      fs.rm(dir)
    end)

    it("exits 1 with the reason for a payload it cannot use", function()
      local dir = fs.tmpdir()
      fs.write(dir .. "/bad.json", '{"hello": ')
      local _, err, code = certhook("normalize " .. dir .. "/bad.json --provider cloudflare")
      assert.are.equal(1, code)
      assert.truthy(err:match("bad%.json: invalid JSON"))
      fs.write(dir .. "/who.json", '{"hello": "world"}')
      _, err, code = certhook("normalize " .. dir .. "/who.json")
      assert.are.equal(1, code)
      assert.truthy(err:match("%-%-provider"))
      fs.rm(dir)
    end)
  end)

  describe("check", function()
    it("lists the handlers of a good directory", function()
      local out, _, code = certhook("check --handlers examples/handlers")
      assert.are.equal(0, code)
      assert.truthy(out:match("examples/handlers: 2 files, 4 handlers"))
      assert.truthy(out:match("dcv%.lua:certificate%.validation%.failed"))
    end)

    it("exits 1 naming file:line of a broken handler", function()
      local dir = fs.tmpdir()
      fs.write(dir .. "/h/broken.lua", "return {\n  ['*'] = function(e)\n    if e then\n  end\n")
      local _, err, code = certhook("check --handlers h", dir)
      assert.are.equal(1, code)
      assert.truthy(err:match("h/broken%.lua:5:"), err)
      fs.rm(dir)
    end)

    it("takes the handlers directory from the config, relative to the config file", function()
      local dir = fs.tmpdir()
      fs.write(dir .. "/conf/certhook.conf.lua", 'handlers = "hooks"\n')
      fs.write(dir .. "/conf/hooks/a.lua", 'return { ["*"] = function() end }')
      local out, err, code = certhook("check --config " .. dir .. "/conf/certhook.conf.lua")
      assert.are.equal(0, code, err)
      assert.truthy(out:match("1 file, 1 handler"))
      fs.rm(dir)
    end)
  end)

  describe("run", function()
    it("runs the matching handlers once and exits 1 if one failed", function()
      local dir = fs.tmpdir()
      fs.write(dir .. "/h/ok.lua", 'return { ["*"] = function() end }')
      local out, _, code = certhook("run --handlers " .. dir .. "/h --event " .. FIX .. "cloudflare/test-message.json")
      assert.are.equal(0, code)
      assert.truthy(out:match("ok    ok%.lua:%*"))
      fs.write(dir .. "/h/fail.lua", 'return { ["notification.*"] = function() error("nope") end }')
      out, _, code = certhook("run --handlers " .. dir .. "/h --event " .. FIX .. "cloudflare/test-message.json")
      assert.are.equal(1, code)
      assert.truthy(out:match("FAIL  fail%.lua:notification%.%*: .*fail%.lua:1: nope"))
      fs.rm(dir)
    end)
  end)

  describe("config", function()
    local dir
    before_each(function() dir = fs.tmpdir() end)
    after_each(function() fs.rm(dir) end)

    it("refuses an unknown setting, naming it", function()
      fs.write(dir .. "/c.lua", 'sources = {}\nsoruces = {}\n')
      local _, err, code = certhook("check --config " .. dir .. "/c.lua")
      assert.are.equal(1, code)
      assert.truthy(err:match('unknown setting "soruces"'))
    end)

    it("reports an error in the config file with its line", function()
      fs.write(dir .. "/c.lua", 'listen = "x"\n\nerror("no secret set")\n')
      local _, err, code = certhook("check --config " .. dir .. "/c.lua")
      assert.are.equal(1, code)
      assert.truthy(err:match("c%.lua:3: no secret set"), err)
    end)

    -- regress/13-7: Lua's message quoted the source text, here the secret
    it("reports a syntax error in the config file without quoting its text", function()
      fs.write(dir .. "/c.lua", 'sources = { c = { provider = "cloudflare",\n  secret = "S3CRET-in-the-file }\n}\n')
      local _, err, code = certhook("check --config " .. dir .. "/c.lua")
      assert.are.equal(1, code)
      assert.truthy(err:match("c%.lua:2: unfinished string"), err)
      assert.falsy(err:find("S3CRET", 1, true), err)
      fs.write(dir .. "/c.lua", 'x = ("TOKEN-abc")()\n') -- a runtime error names the constant
      _, err, code = certhook("check --config " .. dir .. "/c.lua")
      assert.are.equal(1, code)
      assert.truthy(err:match("c%.lua:1: "), err)
      assert.falsy(err:find("TOKEN", 1, true), err)
    end)

    it("exits 1 when an explicit config file is missing", function()
      local _, err, code = certhook("check --config " .. dir .. "/missing.lua")
      assert.are.equal(1, code)
      assert.truthy(err:match("cannot read config"))
    end)
  end)

  describe("serve refuses to start", function()
    local dir
    before_each(function()
      dir = fs.tmpdir()
      fs.write(dir .. "/handlers/a.lua", "return {}")
    end)
    after_each(function() fs.rm(dir) end)

    local function serve_fails(config, pattern)
      fs.write(dir .. "/certhook.conf.lua", 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n' .. config)
      local _, err, code = fs.run(("cd '%s' && timeout 20 %s serve"):format(dir, Server.certhook))
      assert.are.equal(1, code)
      assert.truthy(err:match(pattern), err)
    end

    it("without sources", function()
      serve_fails("", "no sources configured")
    end)

    it("with a source that has no credentials", function()
      serve_fails('sources = { cloudflare = { provider = "cloudflare", secret = os.getenv("UNSET_SECRET_VAR") } }',
        "sources%.cloudflare has no credentials")
      serve_fails('sources = { ibm = { provider = "ibm-cm" } }', "sources%.ibm has no credentials")
    end)

    it("with an unknown provider or an unreadable key", function()
      serve_fails('sources = { x = { provider = "acme", insecure = true } }', 'sources%.x%.provider must be one of cloudflare, ibm%-cm')
      serve_fails('sources = { ibm = { provider = "ibm-cm", public_key = "nope.pem" } }', "sources%.ibm%.public_key: cannot read public key")
    end)

    -- regress/13-3: any truthy value opened the source
    it("with insecure set to anything but the boolean true", function()
      for _, v in ipairs { '"false"', "0", "1", '"yes"', "false", 'os.getenv("CERTHOOK_TEST_FALSE")' } do
        fs.write(dir .. "/certhook.conf.lua", 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n' ..
          ('sources = { open = { provider = "cloudflare", insecure = %s } }'):format(v))
        local _, err, code = fs.run(("cd '%s' && CERTHOOK_TEST_FALSE=false timeout 20 %s serve"):format(dir, Server.certhook))
        assert.are.equal(1, code, v)
        assert.truthy(err:match("sources%.open%.insecure must be true"), v .. ": " .. err)
      end
    end)

    -- regress/13-10: unknown keys inside a source were ignored
    it("with an unknown setting in a source, naming it", function()
      serve_fails('sources = { c = { provider = "cloudflare", secret = "s", secrte = "t" } }',
        "sources%.c%.secrte is not a setting")
      serve_fails('sources = { i = { provider = "ibm-cm", insecure = true, secret = "s" } }',
        "sources%.i%.secret is not a setting %(those of sources%.i are provider, insecure, public_key")
      serve_fails('sources = { c = { provider = "cloudflare", secret = "s", [1] = "x" } }',
        "sources%.c has a key that is not a name")
      serve_fails('sources = { c = { provider = "cloudflare", secret = "s" } }\nlimits = { max_bodyy = 5 }',
        "limits%.max_bodyy is not a setting")
      serve_fails('sources = { c = { provider = "cloudflare", secret = "s" } }\ndelivery = { retries = 5 }',
        "delivery%.retries is not a setting")
    end)

    it("with a wrongly typed limit", function()
      serve_fails('sources = { c = { provider = "cloudflare", secret = "s" } }\nlimits = { max_body = "big" }',
        "limits%.max_body must be a number")
    end)

    it("when the port is taken", function()
      local socket = require "socket"
      local s = assert(socket.bind("127.0.0.1", 0))
      local _, port = s:getsockname()
      fs.write(dir .. "/certhook.conf.lua", ('listen = "127.0.0.1:%d"\nadmin = "127.0.0.1:0"\nsources = { c = { provider = "cloudflare", secret = "s" } }'):format(port))
      local _, err, code = certhook("serve", dir)
      s:close()
      assert.are.equal(1, code)
      assert.truthy(err:match("cannot listen on 127%.0%.0%.1:" .. port), err)
    end)
  end)

  describe("send", function()
    local srv
    setup(function()
      srv = Server.start {
        config = 'sources = { cloudflare = { provider = "cloudflare", secret = "t0p" }, ibm = { provider = "ibm-cm", public_key = "pub.pem" } }',
        handlers = { ["a.lua"] = "return {}" },
        dir = (function()
          local d = fs.tmpdir()
          local jwt = require "helpers.jwt"
          local priv, pub = jwt.keypair(d, "k")
          os.rename(pub, d .. "/pub.pem")
          os.rename(priv, d .. "/priv.pem")
          return d
        end)(),
      }
    end)
    teardown(function() srv:cleanup() end)

    it("posts a payload with the configured secret and prints the reply", function()
      local conf = srv.dir .. "/certhook.conf.lua"
      local url = ("http://127.0.0.1:%d/hooks/cloudflare"):format(srv.port)
      local out, _, code = certhook(("send %scloudflare/test-message.json --config %s --url %s"):format(FIX, conf, url))
      assert.are.equal(0, code)
      assert.truthy(out:match("^20[02] "))
      out, _, code = certhook(("send %scloudflare/test-message.json --url %s --secret wrong"):format(FIX, url))
      assert.are.equal(1, code)
      assert.truthy(out:match("^401 "))
    end)

    it("says why it sends no secret, before it sends and with the 401", function()
      local url = ("http://127.0.0.1:%d/hooks/cloudflare"):format(srv.port)
      local cwd = fs.tmpdir()
      local send = ("send %s/%scloudflare/test-message.json --url %s"):format(fs.run("pwd"):match("[^\n]+"), FIX, url)
      local out, err, code = certhook(send, cwd) -- no config file
      assert.are.equal(1, code)
      assert.truthy(out:match("^401 "), out)
      assert.truthy(err:find("warning: sending no credentials -- no config file", 1, true), err)
      assert.truthy(err:find("the server refused the credentials sent: none: no config file", 1, true), err)
      assert.truthy(err:find("its own sources.cloudflare", 1, true), err)
      fs.write(cwd .. "/certhook.conf.lua", 'sources = { cloudflare = { provider = "cloudflare", secret = os.getenv("CERTHOOK_TEST_UNSET") } }\n')
      out, err, code = certhook(send, cwd) -- its variable unset
      assert.are.equal(1, code)
      assert.truthy(out:match("^401 "), out)
      assert.truthy(err:find("warning: sending no credentials -- sources.cloudflare in certhook.conf.lua sets no secret (when it reads one with os.getenv", 1, true), err)
      fs.write(cwd .. "/certhook.conf.lua", 'sources = { cloudflare = { provider = "cloudflare", secret = "t0p" } }\n')
      os.execute("chmod 600 '" .. cwd .. "/certhook.conf.lua'")
      out, err, code = certhook(send, cwd)
      assert.are.equal(0, code, err)
      assert.is_nil(err:find("warning", 1, true), err)
      fs.rm(cwd)
    end)

    it("signs a bare IBM payload with --sign-key", function()
      local url = ("http://127.0.0.1:%d/hooks/ibm"):format(srv.port)
      local out, _, code = certhook(("send %sibm-cm/v4.cert_issued.json --url %s --sign-key %s/priv.pem"):format(FIX, url, srv.dir))
      assert.are.equal(0, code, out)
      assert.truthy(out:match('^202 .*"certificate.issuance.succeeded"'))
      local err
      out, err, code = certhook(("send %sibm-cm/v4.cert_issued.json --url %s"):format(FIX, url))
      assert.are.equal(1, code)
      assert.truthy(out:match("^401 "))
      assert.truthy(err:find("ibm-cm payloads are signed; --sign-key PRIVATE.pem signs them", 1, true), err)
    end)

    it("sends a body that is already a token as it is, and refuses an unknown provider or key", function()
      local url = ("http://127.0.0.1:%d/hooks/ibm"):format(srv.port)
      local jwt = require "helpers.jwt"
      local signed = srv.dir .. "/signed.json"
      fs.write(signed, '{"data":"' .. jwt.rs256(fs.read(FIX .. "ibm-cm/v4.cert_issued.json"), srv.dir .. "/priv.pem") .. '"}')
      local out, _, code = certhook(("send %s --url %s --sign-key %s/priv.pem"):format(signed, url, srv.dir))
      assert.are.equal(0, code, out)
      local _, err
      _, err, code = certhook(("send %s --url %s --provider nope"):format(signed, url))
      assert.are.equal(2, code)
      assert.truthy(err:match("unknown provider nope"))
      _, err, code = certhook(("send %sibm-cm/v4.cert_issued.json --url %s --sign-key %s/missing.pem"):format(FIX, url, srv.dir))
      assert.are.equal(1, code)
      assert.truthy(err:match("missing%.pem"), err)
    end)

    it("exits 1 when nothing listens", function()
      local _, err, code = certhook("send " .. FIX .. "cloudflare/test-message.json --url http://127.0.0.1:1/hooks/x")
      assert.are.equal(1, code)
      assert.truthy(err:match("http://127%.0%.0%.1:1/hooks/x"))
    end)
  end)
end)

describe("make run", function()
  it("serves on the LISTEN and ADMIN given to make, and prints its commands for them", function()
    local socket = require "socket"
    local function free_port()
      local s = assert(socket.bind("127.0.0.1", 0))
      local _, port = s:getsockname()
      s:close()
      return port
    end
    local listen, admin = free_port(), free_port()
    local vars = ("LISTEN=127.0.0.1:%d ADMIN=127.0.0.1:%d"):format(listen, admin)
    local out = fs.run("make -n run " .. vars)
    assert.truthy(out:find(vars .. " sh tests/demo.sh", 1, true), out)
    -- what make runs, with the demo's data and keys in a directory of the test's own
    local dir = fs.tmpdir()
    os.execute(("DEMO='%s' %s sh tests/demo.sh %s >'%s/out' 2>&1 & echo $! >'%s/pid'")
      :format(dir, vars, Server.certhook, dir, dir))
    local ready = fs.wait_for(function() return (fs.read(dir .. "/out") or ""):find('"message":"listening"') end, 20)
    local text, pid = fs.read(dir .. "/out") or "", fs.read(dir .. "/pid"):match("%d+")
    local health = ready and require("helpers.http").get(admin, "/healthz").status
    os.execute("kill " .. pid)
    assert(fs.wait_for(function() return not os.execute("kill -0 " .. pid .. " 2>/dev/null") end, 15))
    fs.rm(dir)
    assert(ready, text)
    assert.truthy(text:find(('"listen":"127.0.0.1:%d"'):format(listen), 1, true), text)
    assert.are.equal(200, health)
    assert.truthy(text:find(("http://127.0.0.1:%d/hooks/cloudflare\n"):format(listen), 1, true), text)
    assert.truthy(text:find(("http://127.0.0.1:%d/readyz\n"):format(admin), 1, true), text)
  end)
end)
