#!/usr/bin/env bash
# Regenerates the small media fixtures of media_index_test.cc (committed:
# a few KiB each, so the unit tests need no ffmpeg) and copies them into the
# media_index fuzz target's seed corpus. After regenerating, run
# `python3 tests/unit/media/walk.py tests/unit/media/*.{mp4,mov,mkv,webm}` and
# update the expected offsets in tests/unit/media_index_test.cc.
set -euo pipefail
cd "$(dirname "$0")"
common=(-hide_banner -loglevel error -y)
v=(-f lavfi -i testsrc2=s=64x48:r=10:d=2)
a=(-f lavfi -i sine=frequency=440:sample_rate=8000:duration=2)
x264=(-map_metadata -1 -fflags +bitexact -c:v libx264 -preset ultrafast -crf 40 -pix_fmt yuv420p -flags +bitexact)
aac=(-c:a aac -b:a 8k -flags +bitexact)
ffmpeg "${common[@]}" "${v[@]}" "${a[@]}" "${x264[@]}" "${aac[@]}" moov_end.mp4
ffmpeg "${common[@]}" "${v[@]}" "${a[@]}" "${x264[@]}" "${aac[@]}" -movflags +faststart faststart.mp4
ffmpeg "${common[@]}" "${v[@]}" "${a[@]}" "${x264[@]}" "${aac[@]}" -f mov moov_end.mov
ffmpeg "${common[@]}" "${v[@]}" "${a[@]}" "${x264[@]}" "${aac[@]}" -f matroska video.mkv
ffmpeg "${common[@]}" "${v[@]}" -map_metadata -1 -fflags +bitexact -c:v libvpx -b:v 20k -deadline realtime -f webm video.webm
seeds=../../fuzz/corpus/media_index
mkdir -p "$seeds"
cp moov_end.mp4 faststart.mp4 moov_end.mov video.mkv video.webm "$seeds/"
ls -l moov_end.mp4 faststart.mp4 moov_end.mov video.mkv video.webm
