"""``python -m taskzoo`` is ``tasks``; it lets ``accelerate launch -m taskzoo run ...`` start one process per device."""

from taskzoo.cli import main

main()
