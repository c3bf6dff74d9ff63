"""WebDataset tar shards, their per-shard index, and the manifest.

A sample is two or three tar members sharing a key ``f<input>-u<unit>-<index>``:

- ``ids.npy``   uint16 token ids of the window (numpy .npy format; read without pickle)
- ``meta.json`` species, token, assembly, record, start/end (0-based, end exclusive, in the
                record's coordinates as read; for a MAF row on '-', on the reverse strand as MAF
                counts them), strand ('-': reverse strand; a reverse-complement copy flips it),
                gc (G+C over A/C/G/T bases of the window), n_frac
- ``mask.npy``  only with ``soft_mask=mask``: packed bits, 1 = soft-masked base, in strand order

Any WebDataset or tar reader reads the shards (``reader.iter_shard`` does, through webdataset).

Each shard ``S.tar`` has a sidecar ``S.idx.npy``: uint64 byte offsets of its samples' first
headers, then of the end-of-archive blocks (n + 1 values). The training loader reads a sample with
one ``pread`` of ``[offset[i], offset[i+1])``, so a data-parallel rank reads only its own samples.
The index is written with the shard rather than rebuilt by scanning tar headers when training
starts: scanning costs one read per member (~2,000 per shard), which at 10^5 shards on a network
file system is minutes of start-up on every rank; the index is one small read per shard.

Both files are written under a temporary name and renamed when complete; the manifest lists each
shard with its sample and token counts and the sha256 of the tar and of its index.

Modules: ``format`` (member names, the tar and .npy headers, ``Sample``), ``writer`` (``UnitWriter``,
``write_shard``), ``reader`` (``decode_sample``, ``iter_shard``, ``read_index``), ``manifest``
(``build_manifest``, ``read_manifest``, ``verify``).
"""
