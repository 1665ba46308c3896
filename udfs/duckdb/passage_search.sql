-- Passage search over long texts: each help article's best window for a question, and its text.
--   polyemb sql -f udfs/duckdb/passage_search.sql          (run from the repository root)
-- embed_chunks(body) cuts an article into windows of max_seq_length tokens (overlapping by a
-- quarter) and embeds each; an article is scored by its best window (ties to the earlier one, as
-- polyemb's core breaks them), whose offsets show the passage. embed() alone would read only the
-- first max_seq_length tokens of each article.
WITH windows AS (
    SELECT id, title, body, c.start, c."end",
           array_cosine_similarity(c.vector, embed('how long until my money is refunded?')) AS score
    FROM read_csv('udfs/data/help_articles.csv', header = true), unnest(embed_chunks(body)) AS u(c)
)
SELECT id, title, round(score, 3) AS score, start, "end", substring(body, start + 1, "end" - start) AS passage
FROM windows
QUALIFY row_number() OVER (PARTITION BY id ORDER BY score DESC, start) = 1
ORDER BY score DESC
LIMIT 3;
