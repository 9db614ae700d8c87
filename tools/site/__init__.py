"""The site generator: plain Python that turns papers/, taxonomy/ and the pilot results into pages and files.

One module per output: `navigation` (the nav tree), `papers` (node and paper page data), `explore` (its data
file), `feed` (what is new, the Atom feed), `downloads` (papers.json), `charts` (statistics SVGs), `pilots`
(study pages and the roofline), and `pages`, which plans them all and renders one page. `tools/site_hook.py` is
the thin MkDocs adapter; nothing here imports MkDocs.
"""
