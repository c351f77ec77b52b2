-- Every script's KEYS, by role (in TaskStore.keys() order: scripts.KEYS).
local meta, q, q1, t, inl, err, fa, ia = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local lease, cn, ch, retry, n, done, wake = KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local idle, hand, apx = KEYS[16], KEYS[17], KEYS[18]
