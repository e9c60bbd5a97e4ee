#!/usr/bin/env bash
# Renders the media plane's shipped prompts and music on hold into prompts/ (or $1): speech with
# espeak-ng, music with sox's synthesiser, all as 16 kHz mono 16-bit WAV (the player resamples
# to each leg's codec). Run by scripts/setup.sh with SETUP_PROMPTS=1; installs espeak-ng and sox
# if they are missing.
#
# Licence: the files are this project's (Apache-2.0, like the code): the text and the melody
# are written here, and neither espeak-ng (GPL-3.0) nor sox (GPL-2.0) puts terms on what they
# render. Nothing recorded by anyone else is shipped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-prompts}
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() { # file, text
  espeak-ng -v en-gb -s 150 -w "$tmp/$1.raw.wav" "$2"
  sox "$tmp/$1.raw.wav" -r 16000 -c 1 -b 16 "$out/$1.wav" norm -6
}
say please-hold "Please hold. Your call is important to us."
say not-available "The person you are calling is not available. Please try again later."
say enter-number "Please enter the number you wish to call, followed by the hash key."
say invalid-number "The number you have entered is not valid."
say goodbye "Thank you for calling. Goodbye."
say call-parked "Your call has been parked."

# Music on hold: 16 s, a slow arpeggio over a soft pad, faded in and out, loopable.
notes=(C4 E4 G4 C5 A3 C4 E4 A4 F3 A3 C4 F4 G3 B3 D4 G4)
parts=()
for i in "${!notes[@]}"; do
  sox -n -r 16000 -c 1 -b 16 "$tmp/n$i.wav" synth 1 pluck "${notes[$i]}" fade 0 1 0.6 gain -8
  parts+=("$tmp/n$i.wav")
done
sox "${parts[@]}" "$tmp/melody.wav"
sox -n -r 16000 -c 1 -b 16 "$tmp/pad.wav" synth 16 sine C3 sine G3 tremolo 0.2 40 gain -26
sox -m "$tmp/melody.wav" "$tmp/pad.wav" "$out/music-on-hold.wav" fade 0.5 16 0.5 norm -8
echo "make-prompts: $(ls "$out"/*.wav | wc -l) files in $out"
