-- The drain benchmark's handler: one HTTP call to the sink, which answers after 100 ms.
local http = require("certhook").http
local url = os.getenv("BENCH_SINK_URL")
return {
  ["*"] = function()
    local resp, err = http.get(url)
    assert(resp and resp.status == 200, err)
  end,
}
