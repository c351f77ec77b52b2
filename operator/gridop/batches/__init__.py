"""The TaskBatch and TaskPool controllers: each kind's life in a controller module (`taskbatch`,
`taskpool`) that reads caches and acts, a pure decision module (`*_rules`), and the workers they
run (`workers`). The data plane and the worker runtime they drive live in `gridop.tasks`."""
