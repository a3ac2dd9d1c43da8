"""whisperkit-bench: every backend, op by op and end to end, against the machine and the peers.

Run ``whisperkit-bench --help``.  Modules:

* `machine` -- machine facts, versions, the shared audio, the one thread setting (incl. BLAS);
* `engines` -- what is raced: our backends and the peers (faster-whisper fp32/int8, openai-whisper);
* `e2e`     -- warm / cold transcription, encoder per window, decoder per token, token equality;
* `ops`     -- per-op microbenchmarks at Whisper's shapes against a roofline measured in the same run;
* `report`  -- terminal table, JSON, markdown; `png` -- the real-time-factor bar chart (no dependency).
"""
