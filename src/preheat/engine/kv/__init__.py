"""The engine's KV memory, from the block pool down to the disk.

One hierarchy, each layer built on the one before:

- ``block_pool``: the fixed pool of KV block ids with reference counts (the tensors
  themselves are the model runner's). A block is shared copy-free by every sequence and
  tree node that holds it.
- ``kv_layout`` and ``window_slots``: a model's sliding-window layers keep their KV apart,
  in slots a block owns only while a window reads it (a running sequence's, or one the
  tree keeps where a cached prefix may be resumed).
- ``radix_cache``: the radix tree of cached blocks keyed by token ids, per namespace. It
  holds one reference on each block it stores, evicts least recently used leaves nobody
  else holds, and keeps a message thread's held prefix (and its partial last block) until
  every other entry has gone.
- ``pin_table``: prompt caching's TTL pins. It records which tree nodes each live pin
  covers; the tree never evicts those. A hit refreshes a pin; an expired pin protects
  nothing and leaves an ordinary cache entry behind.
- ``kv_offload``: write-through of every pin to the disk tier, pins leaving RAM for their
  disk copy when they outgrow their share of the pool, and reads back on a hit.
  ``disk_tier`` keeps the files within a quota (least recently used first, blocks shared
  by prefixes with a common start); ``disk_format`` is the files' bytes, a versioned
  contract.
- ``kv_budget`` sizes the pool and the disk quota; ``kv_dtype`` picks the cache's dtype.

Threads: the engine thread owns the pool, the tree and the offload. The pin table is the
one structure other threads touch (the API's thread looks pins up and asks whether a new
one fits), so the lock lives in it. The disk tier writes and reads files on two threads of
its own and hands results to the engine thread as completions.

Import the modules themselves: this package re-exports nothing, so importing it loads no
torch.
"""
