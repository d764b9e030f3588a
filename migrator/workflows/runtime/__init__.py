"""The cluster side of a run, swap and rollback, beside the executor that runs the Jobs.

- :mod:`.journal_store`: the journal as a ConfigMap ``migrator-<plan>``;
- :mod:`.lease`: the Lease ``migrator-<plan>`` that lets one run of a plan work at a time;
- :mod:`.workloads`: scaling workloads and suspending Flux releases, remembered in the journal;
- :mod:`.quiesce`: the cutover's quiesce (suspend Flux, scale to 0, wait for the pods to go);
- :mod:`.context`: the :class:`~migrator.workflows.run.RunContext` of a cluster run.

Every API call goes through :class:`migrator.kube.KubeClient`; executors import nothing from here.
"""
