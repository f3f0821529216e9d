-- The journal's schema is its migrations, src/journal/sql/<store>/NNNN_<what>.sql, embedded in
-- the build (Makefile): every file applied in name order to a fresh database by the command
-- line (sqlite3, psql) gives the schema `certhook serve` makes at open, at the version it
-- records; a journal of an earlier version is upgraded to that same schema.
local fs = require "helpers.fs"
local PG = require "helpers.pg"
local Server = require "helpers.server"

local SQL = "src/journal/sql/"
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'

-- The migrations of a store ("sqlite", "pg"), in name order.
local function migrations(store)
  local out = assert(fs.run("ls " .. SQL .. store .. "/*.sql | sort"))
  local files = {}
  for f in out:gmatch("[^\n]+") do files[#files + 1] = f end
  return files
end

-- A shell command's output; asserts it worked.
local function run(cmd)
  local out, err, code = fs.run(cmd)
  assert(code == 0, cmd .. ": " .. (err or "") .. (out or ""))
  return out
end

-- A server that made or upgraded its journal at its start, stopped (dir: where it runs).
local function served(config, dir)
  local srv = Server.start { config = SOURCES .. (config or ""), dir = dir }
  srv:stop()
  return srv
end

-- The text without its whitespace (SQLite keeps each CREATE statement as it was written).
local function tokens(s)
  return (s:gsub("%s+", ""))
end

describe("the journal's migrations", function()
  for _, t in ipairs { { "sqlite", 10 }, { "pg", 5 } } do
    local store, least = t[1], t[2]
    it("are numbered from 0001 in order, one file each: " .. store, function()
      local files = migrations(store)
      assert.is_true(#files >= least)
      for i, f in ipairs(files) do
        assert.are.equal(("%04d"):format(i), f:match("/(%d%d%d%d)_[%w_]+%.sql$"), f)
      end
    end)
  end
end)

describe("the SQLite journal's migrations", function()
  local files = migrations("sqlite")

  -- Every object of the journal at path and its SQL, and the schema version.
  local function schema(path)
    return run(("sqlite3 '%s' \"SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name\""):format(path)),
      run(("sqlite3 '%s' 'PRAGMA user_version'"):format(path)):match("%d+")
  end

  it("applied in order by sqlite3 give the schema a server makes, at its version #sqlite", function()
    local srv = served()
    local want, version = schema(srv.dir .. "/data/certhook.db")
    srv:cleanup()
    assert.are.equal(tostring(#files), version)

    local dir = fs.tmpdir()
    local db = dir .. "/fresh.db"
    for _, f in ipairs(files) do run(("sqlite3 -bail '%s' < '%s'"):format(db, f)) end
    run(("sqlite3 '%s' 'PRAGMA user_version = %d'"):format(db, #files))
    local have, have_version = schema(db)
    fs.rm(dir)
    assert.truthy(have:find("table|inventory|inventory|CREATE TABLE inventory", 1, true))
    assert.are.equal(want, have)
    assert.are.equal(version, have_version)
  end)

  it("upgrade a journal of the previous release to the same schema #sqlite", function()
    local fresh = served()
    local want = schema(fresh.dir .. "/data/certhook.db")
    fresh:cleanup()

    local dir = fs.tmpdir()
    run(("mkdir -p '%s/data' && sqlite3 '%s/data/certhook.db' < tests/fixtures/journal-v4.sql"):format(dir, dir))
    assert.are.equal("4", select(2, schema(dir .. "/data/certhook.db")))
    local old = served(nil, dir)
    local have, version = schema(dir .. "/data/certhook.db")
    old:cleanup()
    assert.are.equal(tostring(#files), version)
    assert.are.equal(tokens(want), tokens(have))
  end)
end)

describe("the PostgreSQL journal's migrations", function()
  local files = migrations("pg")
  local pg
  setup(function() pg = PG.start() end)
  teardown(function() if pg then pg:cleanup() end end)

  -- The schema certhook of database db, as pg_dump prints it (but certhook.meta, the version,
  -- which the store keeps itself, and the random key of pg_dump's \restrict lines), and the
  -- version.
  local function schema(db)
    local dump = run(("unset LD_PRELOAD; pg_dump --schema-only --schema=certhook --exclude-table=certhook.meta '%s'")
      :format(pg:uri(db)))
    return dump:gsub("\n\\(u?n?restrict) %S+", "\n\\%1"), pg:sql(db, "SELECT version FROM certhook.meta")[1][1]
  end

  -- Applies the first `last` migrations to database db with psql, as the store does: in one
  -- transaction, in the schema certhook, made with certhook.meta, which records the version.
  local function apply(db, last)
    local cmd = ("unset LD_PRELOAD; psql -X -q -v ON_ERROR_STOP=1 --single-transaction '%s'"):format(pg:uri(db)) ..
      " -c 'CREATE SCHEMA certhook' -c 'CREATE TABLE certhook.meta (version integer NOT NULL)'" ..
      " -c 'SET search_path TO certhook'"
    for i = 1, last do cmd = cmd .. (" -f '%s'"):format(files[i]) end
    run(cmd .. (" -c 'INSERT INTO meta VALUES (%d)'"):format(last))
  end

  local function serve(db)
    return served(("data = %q\n"):format(pg:uri(db)))
  end

  it("applied in order by psql give the schema a server makes, at its version", function()
    local made = pg:createdb()
    serve(made):cleanup()
    local want, version = schema(made)
    assert.are.equal(tostring(#files), version)

    local fresh = pg:createdb()
    apply(fresh, #files)
    local have, have_version = schema(fresh)
    assert.truthy(have:match("CREATE FUNCTION certhook%.fold_begin%("))
    assert.truthy(have:match("CREATE TABLE certhook%.inventory "))
    assert.are.equal(want, have)
    assert.are.equal(version, have_version)
  end)

  it("upgrade a journal of the first version to the same schema", function()
    local made = pg:createdb()
    serve(made):cleanup()
    local want = schema(made)

    local old = pg:createdb()
    apply(old, 1)
    serve(old):cleanup()
    local have, version = schema(old)
    assert.are.equal(tostring(#files), version)
    assert.are.equal(want, have)
  end)
end)
