-- Cache misses: every request is a user never seen before; each wrk thread numbers its own users.
-- Answers are counted by X-Recommendations-Source (see sources.lua): a miss should be answered by Personalize.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local sources = require("sources")
setup = sources.setup
response = sources.response
done = sources.finish

function init(args)
  n = 0
  prefix = "bench-miss-" .. (os.getenv("BENCH_RUN") or "0") .. "-" .. tid .. "-"
  sources.init()
end

request = function()
  n = n + 1
  return wrk.format("GET", "/recommendations?user_id=" .. prefix .. n)
end
