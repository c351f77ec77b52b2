-- needs: (nothing)
-- Terminal events of this call, written as one stream entry at the end.
local ev_f, ev_o, ev_x, ev_bytes = {}, {}, {}, 0
