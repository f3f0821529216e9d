rockspec_format = "3.0"
package = "certhook"
version = "scm-1"

source = {
  url = "git+https://github.com/certhook/certhook.git",
  branch = "main",
}

description = {
  summary = "Certificate-lifecycle webhook receiver with Lua handlers",
  detailed = [[
certhook receives certificate-lifecycle webhooks (Cloudflare SSL for SaaS and certificate
alerts, IBM Cloud Certificate Manager callbacks v1-v4), authenticates them, normalizes every
provider and version into one event, journals it durably (SQLite, fsync before the 202) and
runs your Lua handlers per event type. One machine keeps the journal in SQLite; several share
one in PostgreSQL (libpq). A C core with an embedded Lua 5.4 API for outbound HTTP, logging
and state.]],
  homepage = "https://github.com/certhook/certhook",
  license = "MIT",
}

dependencies = {
  "lua >= 5.4",
  "lua-cjson",
}

-- Debian: libmicrohttpd-dev libcurl4-openssl-dev libsqlite3-dev libpq-dev libssl-dev
-- libgnutls28-dev
external_dependencies = {
  MICROHTTPD = { header = "microhttpd.h", library = "microhttpd" },
  CURL = { library = "curl" }, -- Debian keeps curl/curl.h in a multiarch include directory
  SQLITE3 = { header = "sqlite3.h", library = "sqlite3" },
  PQ = { header = "postgresql/libpq-fe.h", library = "pq" }, -- libpq (Debian's layout)
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
  GNUTLS = { header = "gnutls/gnutls.h", library = "gnutls" }, -- HTTPS (libmicrohttpd's TLS)
}

build = {
  type = "make",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA = "$(LUA)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    DEP_CFLAGS = "-I$(MICROHTTPD_INCDIR) -I$(SQLITE3_INCDIR) -I$(PQ_INCDIR)/postgresql -I$(OPENSSL_INCDIR) -I$(GNUTLS_INCDIR)",
    DEP_LIBS = "-L$(MICROHTTPD_LIBDIR) -L$(CURL_LIBDIR) -L$(SQLITE3_LIBDIR) -L$(PQ_LIBDIR) -L$(OPENSSL_LIBDIR) -L$(GNUTLS_LIBDIR) -lmicrohttpd -lcurl -lsqlite3 -lpq -lssl -lcrypto -lgnutls",
  },
  install_variables = {
    LUA = "$(LUA)",
    PREFIX = "$(PREFIX)",
    LUADIR = "$(LUADIR)",
    LIBDIR = "$(LIBDIR)",
    BINDIR = "$(BINDIR)",
  },
}
