# Athena over the lake: a Glue database and one table per silver, quarantine and gold table, over
# the contract's paths, with the columns the lake writes. deathmetal_lake_tests/test_infra.py
# compares local.lake_tables with deathmetal_lake/catalog.py (names, paths, columns and types).
#
# Athena reads a table from a folder (its LOCATION prefix), never from a single object. A folder
# table (`silver/reviews/`) is its folder. A file table (`gold/top10_by_country.parquet`) is a
# symlink table: its LOCATION is `athena/{table}/` holding one manifest that names the file, so
# the lake keeps the contract's paths and Athena reads exactly that object.
#
# LocalStack's community edition has no Glue or Athena, so the catalog exists only on AWS: it is
# left out with use_localstack, or athena_catalog = false (tflocal, which sets no variable).

locals {
  # Mirrors lake_catalog() in deathmetal_lake/catalog.py: the Glue name, the path in the bucket
  # (a trailing slash for a folder table) and the columns in the lake's order, as Hive types.
  lake_tables = {
    gold_album_rankings = {
      path = "gold/album_rankings.parquet"
      columns = [
        ["rank", "bigint"],
        ["album_id", "bigint"],
        ["album_title", "string"],
        ["band_id", "bigint"],
        ["band_name", "string"],
        ["year", "bigint"],
        ["review_count", "bigint"],
        ["mean_score", "double"],
        ["weighted_score", "double"],
      ]
    }
    gold_band_album_counts = {
      path = "gold/band_album_counts.parquet"
      columns = [
        ["band_id", "bigint"],
        ["band_name", "string"],
        ["album_count", "bigint"],
      ]
    }
    gold_band_avg_scores = {
      path = "gold/band_avg_scores.parquet"
      columns = [
        ["band_id", "bigint"],
        ["band_name", "string"],
        ["country", "string"],
        ["review_count", "bigint"],
        ["mean_score", "double"],
        ["min_score", "double"],
        ["max_score", "double"],
        ["std_score", "double"],
      ]
    }
    gold_brazilian_bands = {
      path = "gold/brazilian_bands.parquet"
      columns = [
        ["band_id", "bigint"],
        ["band_name", "string"],
        ["status", "string"],
        ["formed_in", "bigint"],
        ["genre", "array<string>"],
        ["theme", "array<string>"],
        ["active_start_year", "bigint"],
        ["active_end_year", "bigint"],
        ["is_active", "boolean"],
      ]
    }
    gold_genre_by_decade = {
      path = "gold/genre_by_decade.parquet"
      columns = [
        ["genre", "string"],
        ["decade", "bigint"],
        ["album_count", "bigint"],
      ]
    }
    gold_top10_by_country = {
      path = "gold/top10_by_country.parquet"
      columns = [
        ["country", "string"],
        ["rank", "bigint"],
        ["band_id", "bigint"],
        ["band_name", "string"],
        ["mean_score", "double"],
        ["review_count", "bigint"],
      ]
    }
    quarantine_albums = {
      path = "quarantine/albums/"
      columns = [
        ["id", "string"],
        ["band", "string"],
        ["title", "string"],
        ["year", "string"],
        ["_source_file", "string"],
        ["_source_row", "bigint"],
        ["_ingest_id", "string"],
        ["_parse_error", "string"],
        ["_raw", "string"],
        ["_reject_reason", "string"],
      ]
    }
    quarantine_bands = {
      path = "quarantine/bands/"
      columns = [
        ["id", "string"],
        ["name", "string"],
        ["country", "string"],
        ["status", "string"],
        ["formed_in", "string"],
        ["genre", "string"],
        ["theme", "string"],
        ["active", "string"],
        ["_source_file", "string"],
        ["_source_row", "bigint"],
        ["_ingest_id", "string"],
        ["_parse_error", "string"],
        ["_raw", "string"],
        ["_reject_reason", "string"],
      ]
    }
    quarantine_reviews = {
      path = "quarantine/reviews/"
      columns = [
        ["id", "string"],
        ["album", "string"],
        ["title", "string"],
        ["score", "string"],
        ["content", "string"],
        ["_source_file", "string"],
        ["_source_row", "bigint"],
        ["_ingest_id", "string"],
        ["_parse_error", "string"],
        ["_raw", "string"],
        ["_reject_reason", "string"],
      ]
    }
    silver_album_reviews = {
      path = "silver/album_reviews/"
      columns = [
        ["review_id", "bigint"],
        ["album_id", "bigint"],
        ["review_title", "string"],
        ["score", "double"],
        ["content", "string"],
        ["album_title", "string"],
        ["band_id", "bigint"],
        ["year", "bigint"],
      ]
    }
    silver_albums = {
      path = "silver/albums/"
      columns = [
        ["id", "bigint"],
        ["band", "bigint"],
        ["title", "string"],
        ["year", "bigint"],
        ["_source_file", "string"],
        ["_source_row", "bigint"],
        ["_ingest_id", "string"],
      ]
    }
    silver_bands = {
      path = "silver/bands/"
      columns = [
        ["id", "bigint"],
        ["name", "string"],
        ["country", "string"],
        ["status", "string"],
        ["formed_in", "bigint"],
        ["genre", "array<string>"],
        ["theme", "array<string>"],
        ["active", "string"],
        ["active_start_year", "bigint"],
        ["active_end_year", "bigint"],
        ["active_periods", "bigint"],
        ["is_active", "boolean"],
        ["_source_file", "string"],
        ["_source_row", "bigint"],
        ["_ingest_id", "string"],
      ]
    }
    silver_music_catalog = {
      path = "silver/music_catalog/"
      columns = [
        ["album_id", "bigint"],
        ["album_title", "string"],
        ["year", "bigint"],
        ["band_id", "bigint"],
        ["band_name", "string"],
        ["country", "string"],
        ["status", "string"],
        ["formed_in", "bigint"],
        ["genre", "array<string>"],
        ["theme", "array<string>"],
        ["active_start_year", "bigint"],
        ["active_end_year", "bigint"],
        ["active_periods", "bigint"],
        ["is_active", "boolean"],
      ]
    }
    silver_reviews = {
      path = "silver/reviews/"
      columns = [
        ["id", "bigint"],
        ["album", "bigint"],
        ["title", "string"],
        ["score", "double"],
        ["content", "string"],
        ["_source_file", "string"],
        ["_source_row", "bigint"],
        ["_ingest_id", "string"],
      ]
    }
  }

  with_catalog   = var.athena_catalog && !var.use_localstack
  catalog_tables = local.with_catalog ? local.lake_tables : {}
  file_tables    = { for name, table in local.catalog_tables : name => table if !endswith(table.path, "/") }
}

resource "aws_glue_catalog_database" "lake" {
  count = local.with_catalog ? 1 : 0

  name        = var.glue_database_name
  description = "The deathmetal-lake tables (silver, quarantine, gold) in s3://${var.bucket_name}/, for Athena."
}

# One manifest per file table: the single Parquet object its symlink table reads.
resource "aws_s3_object" "athena_manifest" {
  for_each = local.file_tables

  bucket       = aws_s3_bucket.lake.id
  key          = "athena/${each.key}/manifest"
  content      = "s3://${aws_s3_bucket.lake.bucket}/${each.value.path}\n"
  content_type = "text/plain"
}

resource "aws_glue_catalog_table" "this" {
  for_each = local.catalog_tables

  name          = each.key
  database_name = aws_glue_catalog_database.lake[0].name
  table_type    = "EXTERNAL_TABLE"
  description   = "s3://${aws_s3_bucket.lake.bucket}/${each.value.path}"

  parameters = {
    EXTERNAL       = "TRUE"
    classification = "parquet"
  }

  storage_descriptor {
    location = (
      endswith(each.value.path, "/")
      ? "s3://${aws_s3_bucket.lake.bucket}/${each.value.path}"
      : "s3://${aws_s3_bucket.lake.bucket}/athena/${each.key}/"
    )
    input_format = (
      endswith(each.value.path, "/")
      ? "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
      : "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
    )
    output_format = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    }

    dynamic "columns" {
      for_each = each.value.columns

      content {
        name = columns.value[0]
        type = columns.value[1]
      }
    }
  }

  depends_on = [aws_s3_object.athena_manifest]
}
