-- Listing versions of every model by stage (`models/-`, filter `stage = STAGE_PRODUCTION`), newest first:
-- without it, the planner walks model_versions_create_time_idx backwards and checks each row's stage,
-- which at 1M versions read ~8,500 index entries per 50-row page (bench/README.md, Scale).
CREATE INDEX model_versions_stage_create_time_idx ON model_versions (stage, create_time, model_id, version);
