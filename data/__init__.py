"""Web-data curation for Llama 3 pre-training (paper section 3.1).

One module per job: ``readers`` (WARC/HTML/JSONL/parquet), ``extract`` (HTML -> text), ``url_filter`` and
``pii`` (safety), ``domains`` (code/math/general), ``langid`` (fastText lid.176), ``heuristics``,
``dedup_url`` / ``dedup_minhash`` / ``dedup_line``, ``quality`` (+ ``train_quality``), ``topics``, ``mix``,
``shards`` (tokenize, pack, read back), ``config``, ``pipeline`` (our resumable runner), ``cluster``
(the same stages on datatrove's executors), ``report`` and ``cli`` (``hf-llama3 curate``).
"""
