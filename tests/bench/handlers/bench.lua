-- The benchmark's handler: reads what a real handler reads, does nothing slow.
local seen = 0
return {
  ["certificate.*"] = function(event)
    if event.type and event.hostname and event.certificate then seen = seen + 1 end
  end,
}
