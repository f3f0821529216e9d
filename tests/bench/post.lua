-- wrk script: POST a Cloudflare SSL for SaaS event with a new event id per request, so
-- every request is journaled and dispatched (no duplicates). Prints one machine-readable
-- line at the end: BENCH requests=.. rps=.. p50_us=.. p99_us=.. errors=..
local path = os.getenv("BENCH_PAYLOAD")
local f = assert(io.open(path, "rb"))
local body = f:read("a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["cf-webhook-auth"] = os.getenv("BENCH_SECRET") or "bench-secret"
local head, tail = body:match('^(.-"id": ")[^"]*(".*)$')
assert(head, "the payload needs metadata.event.id")
local counter, threads = 0, 0

function setup(thread)
  threads = threads + 1
  thread:set("tag", threads)
end

-- BENCH_CERTS=N: each request names one of N certificates (the payload's certificate id and
-- hostname made unique per certificate) rather than all the same one.
local certs = tonumber(os.getenv("BENCH_CERTS") or "")
local cert_id, host = tail:match('"ssl": {%s*"id": "([^"]+)"'), tail:match('"hostname": "([^"]+)"')
if certs then
  assert(cert_id and host, "BENCH_CERTS needs data.ssl.id and data.hostname in the payload")
  tail = tail:gsub(cert_id:gsub("%-", "%%-"), "%%CERT%%"):gsub(host:gsub("[%-%.]", "%%%0"), "%%HOST%%")
end

function request()
  counter = counter + 1
  local rest = tail
  if certs then
    local n = counter % certs
    rest = tail:gsub("%%CERT%%", "bench-cert-" .. n):gsub("%%HOST%%", "h" .. n .. ".bench.example")
  end
  return wrk.format(nil, nil, nil, head .. ("bench-%s-%d-%d"):format(os.getenv("BENCH_RUN") or "0", tag or 0, counter) .. rest)
end

function done(summary, latency)
  local e = summary.errors
  io.write(("BENCH requests=%d rps=%.1f p50_us=%d p99_us=%d errors=%d\n"):format(summary.requests,
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
