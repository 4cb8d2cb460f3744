"""Word lists and sentence templates of the generated biographies ('bios').

A biography is an opening sentence naming the person (first name, often a surname too),
then one to three of: an education sentence, an activity sentence, a personal sentence
(hobbies or family), in that order: 2-4 sentences and under 70 words in all. After the
opening, the person is 'they/them/their', as in the pronoun-replaced Bias in Bios of
Henderson et al. Example (a nurse):

  "Maria Lopez works at a regional hospital in Denver. They earned a bachelor of science
  in nursing from Ohio State University. Day to day, they care for patients after surgery."

Profession shows only through the vocabulary: workplaces, degrees, activities and focus
areas (VOCABULARY), some shared between related professions (hospital: nurse, physician,
surgeon; law firm: attorney, paralegal). Gender shows only through the first name and, in
family sentences, gendered words ('mother of two' / 'father of two'); `biography` decides
both from the draws it is given, so leakage is set entirely by its `gender_leak` argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lib.data._bios_dataset import PROFESSIONS


def _vocab(workplaces, degrees, activities, focuses):
  """One profession's words; activities are verb phrases that follow 'they'."""
  return dict(workplace=workplaces, degree=degrees, activity=activities, focus=focuses)


VOCABULARY = {
    'accountant': _vocab(
        ('a regional accounting firm', 'a tax advisory practice',
         'the finance department of a retail chain'),
        ('a degree in accounting', 'an MBA in finance'),
        ('prepare tax returns for small businesses', 'audit financial statements',
         'advise clients on bookkeeping', 'reconcile ledgers and payroll'),
        ('tax planning', 'corporate audits', 'forensic accounting')),
    'architect': _vocab(
        ('an architecture studio', 'a design firm known for public buildings',
         'a sustainable building practice'),
        ('a master of architecture', 'a degree in architecture and urban design'),
        ('design residential and commercial buildings', 'draft blueprints and site plans',
         'oversee construction projects', 'develop sustainable building concepts'),
        ('sustainable housing', 'urban renewal projects', 'museum and library design')),
    'attorney': _vocab(
        ('a litigation firm', 'a corporate law firm', 'the public defender office'),
        ('a law degree', 'a juris doctor'),
        ('represent clients in civil litigation', 'negotiate settlements',
         'argue cases before state courts', 'draft contracts for businesses'),
        ('family law', 'criminal defense', 'intellectual property disputes')),
    'chiropractor': _vocab(
        ('a chiropractic clinic', 'a spine and wellness center',
         'a sports rehabilitation practice'),
        ('a doctor of chiropractic degree', 'a degree in kinesiology'),
        ('treat back and neck pain', 'perform spinal adjustments',
         'help patients recover from sports injuries', 'teach posture and ergonomics'),
        ('spinal health', 'sports chiropractic', 'pain relief without surgery')),
    'comedian': _vocab(
        ('comedy clubs across the country', 'a late night television show', 'an improv theater'),
        ('a degree in theater', 'training at an improv school'),
        ('perform stand-up comedy', 'write jokes and sketches',
         'host a weekly comedy podcast', 'tour with a one-hour comedy special'),
        ('observational humor', 'sketch comedy', 'satire about everyday life')),
    'composer': _vocab(
        ('a film scoring studio', 'the city symphony orchestra', 'a music conservatory'),
        ('a degree in music composition', 'a master of music'),
        ('write scores for film and television', 'compose chamber music and symphonies',
         'orchestrate works for string quartet', 'record soundtracks for video games'),
        ('orchestral music', 'film scores', 'contemporary choral works')),
    'dentist': _vocab(
        ('a family dental practice', 'a dental clinic', 'a pediatric dentistry office'),
        ('a doctor of dental surgery degree', 'a degree in dental medicine'),
        ('provide cleanings, fillings and crowns', 'treat gum disease',
         'perform root canals and implants', 'help patients keep healthy teeth'),
        ('cosmetic dentistry', 'pediatric dental care', 'dental implants')),
    'dietitian': _vocab(
        ('a hospital nutrition department', 'a private nutrition practice',
         'a community wellness program'),
        ('a degree in nutrition and dietetics', 'a master of science in clinical nutrition'),
        ('create meal plans for clients', 'counsel patients on healthy eating',
         'manage diets for diabetes and heart disease', 'teach nutrition workshops'),
        ('clinical nutrition', 'weight management', 'sports nutrition')),
    'dj': _vocab(
        ('nightclubs and festivals', 'a popular radio station', 'a club residency downtown'),
        ('training in audio engineering', 'a certificate in music production'),
        ('spin house and techno sets', 'mix tracks at weddings and parties',
         'produce electronic dance music', 'host a weekend radio mix show'),
        ('electronic dance music', 'hip hop and funk sets', 'live remixing')),
    'filmmaker': _vocab(
        ('an independent film company', 'a documentary production studio', 'a film collective'),
        ('a degree in film production', 'an MFA in cinema'),
        ('direct and produce documentaries', 'write and shoot short films',
         'edit feature films', 'screen their films at international festivals'),
        ('documentary storytelling', 'independent cinema', 'experimental film')),
    'interior_designer': _vocab(
        ('an interior design studio', 'a home furnishing company', 'a hospitality design firm'),
        ('a degree in interior design', 'a certificate in interior architecture'),
        ('design living spaces for homeowners', 'select furniture, fabrics and lighting',
         'renovate kitchens and bathrooms', 'style hotel lobbies and restaurants'),
        ('residential interiors', 'modern kitchen design', 'boutique hotel interiors')),
    'journalist': _vocab(
        ('a daily newspaper', 'a national news magazine', 'a public radio newsroom'),
        ('a degree in journalism', 'a master of journalism'),
        ('report on politics and local government', 'write investigative stories',
         'interview sources and cover breaking news', 'edit features for the weekend edition'),
        ('investigative reporting', 'political coverage', 'science and health news')),
    'model': _vocab(
        ('an international modeling agency', 'fashion houses in Paris and Milan',
         'a talent agency'),
        ('training at a modeling school', 'a degree in fashion merchandising'),
        ('walk the runway at fashion weeks', 'pose for magazine covers and campaigns',
         'shoot editorials for fashion brands', 'appear in commercials for beauty brands'),
        ('runway modeling', 'fashion editorials', 'commercial print campaigns')),
    'nurse': _vocab(
        ('a regional hospital', 'the intensive care unit of a medical center',
         'a home health agency'),
        ('a bachelor of science in nursing', 'an associate degree in nursing'),
        ('care for patients after surgery', 'administer medications and monitor vital signs',
         'coordinate care with physicians', 'educate families about patient care'),
        ('critical care nursing', 'pediatric care', 'oncology nursing')),
    'painter': _vocab(
        ('a studio in the arts district', 'a contemporary art gallery', 'an artist residency'),
        ('a BFA in painting', 'a degree in fine arts'),
        ('paint large oil canvases', 'exhibit work in galleries',
         'create watercolor landscapes', 'work on abstract acrylic series'),
        ('abstract painting', 'landscape and portrait painting', 'figurative oil painting')),
    'paralegal': _vocab(
        ('a law firm', 'the legal department of an insurance company',
         'a litigation support team'),
        ('a paralegal certificate', 'an associate degree in paralegal studies'),
        ('prepare legal documents and filings', 'assist attorneys with case research',
         'organize discovery and trial exhibits', 'manage court deadlines'),
        ('litigation support', 'real estate closings', 'legal research')),
    'pastor': _vocab(
        ('a community church', 'a Baptist congregation', 'a Lutheran parish'),
        ('a master of divinity', 'a degree in theology'),
        ('preach sermons every Sunday', 'lead worship and Bible study',
         'counsel members of the congregation', 'organize church outreach programs'),
        ('pastoral care', 'youth ministry', 'community outreach')),
    'personal_trainer': _vocab(
        ('a fitness center', 'a boutique gym', 'a sports performance studio'),
        ('a certification in personal training', 'a degree in exercise science'),
        ('design workout programs for clients', 'coach strength and conditioning sessions',
         'help clients lose weight and build muscle', 'lead group fitness classes'),
        ('strength training', 'weight loss coaching', 'functional fitness')),
    'photographer': _vocab(
        ('a photography studio', 'a wedding photography business', 'a photo agency'),
        ('a degree in photography', 'a certificate in visual media'),
        ('shoot weddings and portraits', 'capture landscapes and wildlife',
         'photograph products for brands', 'edit images in the darkroom'),
        ('portrait photography', 'wedding photography', 'documentary photography')),
    'physician': _vocab(
        ('a primary care clinic', 'a university medical center', 'a community health center'),
        ('a medical degree', 'a doctor of medicine degree'),
        ('diagnose and treat adult patients', 'manage chronic conditions such as diabetes',
         'see patients for preventive checkups', 'supervise medical residents'),
        ('internal medicine', 'family medicine', 'cardiology')),
    'poet': _vocab(
        ('a literary magazine', 'a small press', 'a writers workshop'),
        ('an MFA in poetry', 'a degree in creative writing'),
        ('write and publish poetry collections', 'give readings at bookstores and festivals',
         'teach poetry workshops', 'edit a journal of verse'),
        ('lyric poetry', 'spoken word', 'poems about memory and place')),
    'professor': _vocab(
        ('a state university', 'the history department of a liberal arts college',
         'a research university'),
        ('a PhD', 'a doctorate in economics'),
        ('teach undergraduate and graduate courses', 'publish research in academic journals',
         'supervise doctoral students', 'lead a research lab funded by federal grants'),
        ('economic history', 'computational biology', 'political theory')),
    'psychologist': _vocab(
        ('a private therapy practice', 'a mental health clinic',
         'a university counseling center'),
        ('a PhD in clinical psychology', 'a doctorate in counseling psychology'),
        ('provide therapy for anxiety and depression', 'conduct psychological assessments',
         'counsel couples and families', 'use cognitive behavioral therapy with clients'),
        ('trauma recovery', 'child and adolescent mental health', 'cognitive behavioral therapy')),
    'rapper': _vocab(
        ('an independent hip hop label', 'a recording studio', 'venues across the country'),
        ('a degree in music business', 'training in audio production'),
        ('write verses and record mixtapes', 'perform at hip hop shows',
         'collaborate with producers on new tracks', 'release singles on streaming platforms'),
        ('conscious hip hop', 'freestyle rap', 'trap music')),
    'software_engineer': _vocab(
        ('a software startup', 'a large technology company', 'a cloud computing company'),
        ('a degree in computer science', "a master's degree in software engineering"),
        ('build scalable web applications', 'write code in Python and Java',
         'design distributed systems and APIs', 'review code and mentor junior developers'),
        ('backend infrastructure', 'machine learning systems', 'mobile app development')),
    'surgeon': _vocab(
        ('a university hospital', 'a trauma center', 'an orthopedic surgery practice'),
        ('a medical degree', 'a doctor of medicine degree and a surgical residency'),
        ('perform complex operations', 'specialize in minimally invasive surgery',
         'operate on patients with sports injuries', 'train residents in the operating room'),
        ('orthopedic surgery', 'cardiothoracic surgery', 'reconstructive surgery')),
    'teacher': _vocab(
        ('a public elementary school', 'a middle school', 'a high school'),
        ('a degree in education', 'a teaching credential'),
        ('teach math and science to fifth graders', 'plan lessons and grade homework',
         'coach the school debate team', 'help students learn to read'),
        ('early literacy', 'middle school math', 'special education')),
    'yoga_teacher': _vocab(
        ('a yoga studio', 'a wellness retreat center', 'a meditation and yoga center'),
        ('a 200-hour yoga teacher training', 'a certification in vinyasa yoga'),
        ('lead vinyasa and hatha yoga classes', 'teach breathing and meditation',
         'guide students through restorative yoga', 'host yoga retreats'),
        ('mindful movement', 'restorative yoga', 'meditation and breathwork')),
}

FEMALE_NAMES = (
    'Mary', 'Jennifer', 'Linda', 'Patricia', 'Elizabeth', 'Susan', 'Jessica', 'Sarah', 'Karen',
    'Nancy', 'Lisa', 'Margaret', 'Emily', 'Michelle', 'Amanda', 'Melissa', 'Deborah',
    'Stephanie', 'Rebecca', 'Laura', 'Sharon', 'Cynthia', 'Kathleen', 'Amy', 'Angela', 'Anna',
    'Emma', 'Olivia', 'Sophia', 'Isabella', 'Hannah', 'Rachel', 'Natalie', 'Julia',
    'Victoria', 'Claire', 'Maria', 'Priya', 'Mei', 'Fatima')
MALE_NAMES = (
    'James', 'John', 'Robert', 'Michael', 'William', 'David', 'Richard', 'Joseph', 'Thomas',
    'Charles', 'Christopher', 'Daniel', 'Matthew', 'Anthony', 'Mark', 'Donald', 'Steven',
    'Paul', 'Andrew', 'Joshua', 'Kevin', 'Brian', 'George', 'Edward', 'Ronald', 'Timothy',
    'Jason', 'Jeffrey', 'Ryan', 'Jacob', 'Gary', 'Nicholas', 'Eric', 'Jonathan', 'Stephen',
    'Benjamin', 'Samuel', 'Henry', 'Rahul', 'Hiroshi')
NEUTRAL_NAMES = (
    'Alex', 'Jordan', 'Taylor', 'Morgan', 'Casey', 'Riley', 'Jamie', 'Avery', 'Quinn',
    'Cameron', 'Robin', 'Skyler', 'Dakota', 'Reese', 'Kendall', 'Sam')
ALL_NAMES = FEMALE_NAMES + MALE_NAMES + NEUTRAL_NAMES
SURNAMES = (
    'Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis', 'Rodriguez',
    'Martinez', 'Hernandez', 'Lopez', 'Wilson', 'Anderson', 'Moore', 'Jackson', 'Martin', 'Lee',
    'Perez', 'Thompson', 'White', 'Harris', 'Sanchez', 'Clark', 'Lewis', 'Robinson', 'Walker',
    'Young', 'Allen', 'Wright', 'Scott', 'Nguyen', 'Hill', 'Green', 'Adams', 'Baker', 'Nelson',
    'Patel', 'Kim', 'Chen', 'Cohen', 'Murphy')
CITIES = (
    'Denver', 'Chicago', 'Boston', 'Seattle', 'Austin', 'Atlanta', 'Portland', 'Phoenix',
    'Minneapolis', 'Nashville', 'San Diego', 'Philadelphia', 'Toronto', 'Vancouver', 'London',
    'Dublin', 'Sydney', 'Melbourne', 'Pittsburgh', 'Baltimore')
UNIVERSITIES = (
    'Ohio State University', 'the University of Michigan', 'UCLA', 'Columbia University',
    'the University of Texas', 'Boston University', 'the University of Toronto',
    'Arizona State University', 'the University of Washington', 'New York University',
    'Penn State', 'the University of Florida', 'McGill University', 'Rutgers University')
HOBBIES = (
    'hiking', 'cooking', 'gardening', 'reading mystery novels', 'running', 'playing chess',
    'traveling', 'baking bread', 'cycling', 'birdwatching', 'playing guitar', 'camping',
    'swimming', 'painting pottery')

OPENINGS = (
    '{first} {last} works at {workplace} in {city}.',
    '{first} has spent {years} years at {workplace}.',
    'Based in {city}, {first} {last} is known for {focus}.',
    '{first} {last} joined {workplace} {years} years ago.',
)
EDUCATION = (
    'They earned {degree} from {university}.',
    'They studied at {university}, where they completed {degree}.',
    'After completing {degree} at {university} in {year}, they settled in {city}.',
)
ACTIVITIES = (
    'They {activity} and {activity2}.',
    'Their work centers on {focus2}, and they {activity}.',
    'Day to day, they {activity}.',
)
HOBBY_SENTENCES = (
    'Outside of work, they enjoy {hobby} and {hobby2}.',
    'In their free time, they love {hobby}.',
)
# (neutral, female, male) wordings of one family sentence; the gendered ones leak gender.
FAMILY_SENTENCES = (
    ('They are a parent of two and live in {city}.',
     'They are a mother of two and live in {city}.',
     'They are a father of two and live in {city}.'),
    ('They live in {city} with their spouse and their dog.',
     'They live in {city} with their husband and their dog.',
     'They live in {city} with their wife and their dog.'),
    ('A proud parent, they spend weekends with their kids.',
     'A proud mom, they spend weekends with their kids.',
     'A proud dad, they spend weekends with their kids.'),
    ('They are a grandparent of three.',
     'They are a grandmother of three.',
     'They are a grandfather of three.'),
)

# Columns of the uniform draws of one biography, in [0, 1).
DRAWS = ('name_leak', 'name', 'surname', 'opening', 'workplace', 'city', 'years', 'focus',
         'focus2', 'has_education', 'education', 'degree', 'university', 'year', 'has_activity',
         'activity_template', 'activity', 'activity2', 'has_personal', 'family', 'family_kind',
         'wording_leak', 'hobby_template', 'hobby', 'hobby2')
_COLUMN = {name: i for i, name in enumerate(DRAWS)}
_EXTRA_PROBABILITY = 0.6  # Each of education, activity, personal; activity if none drawn.
_FAMILY_PROBABILITY = 0.5  # Of a personal sentence, independent of gender.


def _pick(options: Sequence[str], u: float) -> str:
  return options[int(u * len(options))]


def _pick_other(options: Sequence[str], u: float, taken: str) -> str:
  """An option other than `taken` (which must be in `options`), uniformly."""
  rest = [option for option in options if option != taken]
  return _pick(rest, u)


def _first_name(u: np.ndarray, gender: int, gender_leak: float) -> str:
  """A first name: gender-matched with probability gender_leak, else from ALL_NAMES.

  Args:
    u: the biography's draws, float [len(DRAWS)].
    gender: 0 male, 1 female.
    gender_leak: probability of a gender-matched name.
  """
  if u[_COLUMN['name_leak']] < gender_leak:
    return _pick(FEMALE_NAMES if gender else MALE_NAMES, u[_COLUMN['name']])
  return _pick(ALL_NAMES, u[_COLUMN['name']])


def _family_sentence(u: np.ndarray, gender: int, gender_leak: float, city: str) -> str:
  """The neutral wording, or with probability gender_leak the gender's wording."""
  wordings = _pick(FAMILY_SENTENCES, u[_COLUMN['family_kind']])
  wording = wordings[2 - gender] if u[_COLUMN['wording_leak']] < gender_leak else wordings[0]
  return wording.format(city=city)


def _personal_sentence(u: np.ndarray, gender: int, gender_leak: float, city: str) -> str:
  if u[_COLUMN['family']] < _FAMILY_PROBABILITY:
    return _family_sentence(u, gender, gender_leak, city)
  hobby = _pick(HOBBIES, u[_COLUMN['hobby']])
  return _pick(HOBBY_SENTENCES, u[_COLUMN['hobby_template']]).format(
      hobby=hobby, hobby2=_pick_other(HOBBIES, u[_COLUMN['hobby2']], hobby))


def biography(u: np.ndarray, profession: int, gender: int, gender_leak: float) -> str:
  """One biography from its draws.

  Args:
    u: float [len(DRAWS)] in [0, 1), the biography's random draws (columns DRAWS).
    profession: index into PROFESSIONS.
    gender: 0 male, 1 female; shows only through the name and family wording.
    gender_leak: in [0, 1]; at 0 the text does not depend on `gender` at all.

  Returns:
    2-4 sentences separated by single spaces.
  """
  words = VOCABULARY[PROFESSIONS[profession]]

  def pick(options: Sequence[str], column: str) -> str:
    return _pick(options, u[_COLUMN[column]])

  activity, focus = pick(words['activity'], 'activity'), pick(words['focus'], 'focus')
  slots = dict(
      first=_first_name(u, gender, gender_leak), last=pick(SURNAMES, 'surname'),
      workplace=pick(words['workplace'], 'workplace'), city=pick(CITIES, 'city'),
      years=2 + int(u[_COLUMN['years']] * 24), focus=focus,
      focus2=_pick_other(words['focus'], u[_COLUMN['focus2']], focus),
      degree=pick(words['degree'], 'degree'), university=pick(UNIVERSITIES, 'university'),
      year=1985 + int(u[_COLUMN['year']] * 36), activity=activity,
      activity2=_pick_other(words['activity'], u[_COLUMN['activity2']], activity))
  has = {part: u[_COLUMN[f'has_{part}']] < _EXTRA_PROBABILITY
         for part in ('education', 'activity', 'personal')}
  has['activity'] |= not any(has.values())
  sentences = [pick(OPENINGS, 'opening').format(**slots)]
  if has['education']:
    sentences.append(pick(EDUCATION, 'education').format(**slots))
  if has['activity']:
    sentences.append(pick(ACTIVITIES, 'activity_template').format(**slots))
  if has['personal']:
    sentences.append(_personal_sentence(u, gender, gender_leak, slots['city']))
  return ' '.join(sentences)
