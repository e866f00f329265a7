-- Installed by cvmharness (roles/wrk). Use with: wrk -s wrk_json.lua ...
--
-- After wrk's own text, prints the whole result as one line that a parser can trust:
--   CVMH_WRK_JSON {"duration_us":...,"requests":...,"bytes":...,
--                  "errors":{"connect":...,"read":...,"write":...,"status":...,"timeout":...},
--                  "latency_us":{"min":...,"max":...,"mean":...,"stdev":...,
--                                "p50":...,"p75":...,"p90":...,"p99":...,"p999":...},
--                  "requests_per_thread_s":{"mean":...,"stdev":...,"max":...}}
-- Latency is in microseconds (wrk records it so). requests_per_thread_s is wrk's
-- per-thread request rate, sampled every 100 ms. A value wrk could not measure
-- (no completed request) is null.

local function number(v)
  if v == nil or v ~= v or v == math.huge or v == -math.huge then
    return "null"
  end
  if v == math.floor(v) then
    return string.format("%.0f", v)
  end
  return string.format("%.17g", v)
end

local function object(keys, values)
  local parts = {}
  for i, key in ipairs(keys) do
    parts[i] = string.format("%q:%s", key, values[key])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

done = function(summary, latency, requests)
  local measured = summary.requests > 0
  local function stat(v)
    if measured then
      return number(v)
    end
    return "null"
  end

  local errors = object({ "connect", "read", "write", "status", "timeout" }, {
    connect = number(summary.errors.connect),
    read = number(summary.errors.read),
    write = number(summary.errors.write),
    status = number(summary.errors.status),
    timeout = number(summary.errors.timeout),
  })

  local latency_us = object({ "min", "max", "mean", "stdev", "p50", "p75", "p90", "p99", "p999" }, {
    min = stat(latency.min),
    max = stat(latency.max),
    mean = stat(latency.mean),
    stdev = stat(latency.stdev),
    p50 = stat(latency:percentile(50)),
    p75 = stat(latency:percentile(75)),
    p90 = stat(latency:percentile(90)),
    p99 = stat(latency:percentile(99)),
    p999 = stat(latency:percentile(99.9)),
  })

  local per_thread = object({ "mean", "stdev", "max" }, {
    mean = stat(requests.mean),
    stdev = stat(requests.stdev),
    max = stat(requests.max),
  })

  local result = object({ "duration_us", "requests", "bytes", "errors", "latency_us", "requests_per_thread_s" }, {
    duration_us = number(summary.duration),
    requests = number(summary.requests),
    bytes = number(summary.bytes),
    errors = errors,
    latency_us = latency_us,
    requests_per_thread_s = per_thread,
  })

  io.write("CVMH_WRK_JSON ", result, "\n")
end
