"""The load generator (after MLPerf LoadGen): the one owner of time in a run.

It owns the clock (this machine's, and each remote worker's offset to it: ``clock``), the scenario's issue schedule
and the completion stamps (``schedule``), the dilation arithmetic (the TDF from the profile, from the workers' own
calibration, the raise and repeat of an overrun inference, the retry of a whole job: ``dilation``) and the verdict as
named checks (``verdict``), over what a run observed (``result``). It starts no worker and knows no method or
strategy: the runtime starts, feeds and stops workers, and hands their reports here. ``errors`` is the bottom of the
controller's side: every layer may raise ``RunFailed``.
"""
