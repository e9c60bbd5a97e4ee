#!/usr/bin/env bash
# Writes pcmu-1s.raw next to this script: one second of a 440 Hz tone at -12 dBFS, raw G.711
# u-law (8000 bytes, no header), the file uac-call.xml streams with <exec rtp_stream=...>
# (sipp 3.6.1 reads rtp_stream files as raw payload: 160 bytes a packet for PCMU).
set -euo pipefail
cd "$(dirname "$0")"
python3 - <<'PY'
import math
def ulaw(sample):  # 16-bit linear -> G.711 u-law (ITU-T G.711, bias 0x84, clip 32635)
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), 32635) + 0x84
    exponent = max(0, sample.bit_length() - 8)
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF
amp = 32767 * 10 ** (-12 / 20)
data = bytes(ulaw(int(amp * math.sin(2 * math.pi * 440 * n / 8000))) for n in range(8000))
open("pcmu-1s.raw", "wb").write(data)
PY
echo "wrote $(pwd)/pcmu-1s.raw"
