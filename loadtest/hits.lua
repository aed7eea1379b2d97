-- Cache hits: 100 users, all answered once before the run.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/recommendations?user_id=bench-hit-" .. (n % 100))
end
