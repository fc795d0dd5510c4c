-- When the current boot began (launch, start or reboot); the boot deadline counts from it.
ALTER TABLE servers ADD COLUMN boot_started_at TEXT;
