"""`python -m graph200k.browse --shards DIR_OR_URL`: look at a Graph200K shard set in a browser.

A small read-only web app served with the standard library (`wsgiref`): an overview of the
dataset (node types, stages and their failures, sampleable task variants, split, manifest
freshness), a filterable grid of samples, one page per sample (every node, its meta,
grounding boxes, its type graph) and one per task (a task drawn by the sampler, shown as
the grid the trainer sees). Every image is read by byte range through
`graph200k.reader.SampleReader`; no shard is scanned.

    catalog.py  what the pages show, from the manifest and the stats files (no HTML)
    media.py    image bytes: members, thumbnails (cached on disk), task grids
    pages.py    the HTML of each page
    app.py      the WSGI app: routes, request checks, responses
    __main__.py the command line and the server
"""
