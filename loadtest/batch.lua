-- Batch answers: every request a random user of the job the bench loaded (BATCH_USERS users, user0 .. userN-1).
-- Answers are counted by X-Recommendations-Source (see sources.lua): every one should come from the batch store.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local sources = require("sources")
setup = sources.setup
response = sources.response
done = sources.finish

function init(args)
  users = tonumber(os.getenv("BATCH_USERS") or "1000000")
  math.randomseed(os.time() * 100 + tid)
  sources.init()
end

request = function()
  return wrk.format("GET", "/recommendations?num_results=10&user_id=user" .. math.random(0, users - 1))
end
