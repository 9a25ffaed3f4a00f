"""Building TG80-style data sets (paper §3.3, App. C.4): seed molecules (`seeds`), the
selection protocol over SMILES libraries (`selection`, `library`), MD engines (`engines`)
and integrators (`dynamics`), the resumable build in one-way layers (`plan` what to build ->
`simulate` one molecule, in this process -> `cluster` the same as Ray tasks -> `build` the
entry point), the stability report (`stability`) and the named presets (`presets`).

Importing this package imports nothing heavy; import the submodules you need.
"""
